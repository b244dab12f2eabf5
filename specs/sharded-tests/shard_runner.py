"""Run this shard's part of the unittest suite and write JUnit XML (standard library only).

Bazel's sharding contract: TEST_TOTAL_SHARDS shards, this one is TEST_SHARD_INDEX
(0-based); test i (in sorted order) belongs to shard i % TEST_TOTAL_SHARDS.
Usage: python3 shard_runner.py TEST_DIR JUNIT_FILE
"""

import os
import sys
import unittest
import xml.etree.ElementTree as ET


def flatten(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from flatten(item)
        else:
            yield item


def main(test_dir, junit_file):
    index = int(os.environ.get("TEST_SHARD_INDEX", "0"))
    count = int(os.environ.get("TEST_TOTAL_SHARDS", "1"))
    every = sorted(flatten(unittest.defaultTestLoader.discover(test_dir)), key=lambda t: t.id())
    mine = [test for i, test in enumerate(every) if i % count == index]
    print(f"shard {index + 1} of {count}: {len(mine)} of {len(every)} tests")
    suite = ET.Element("testsuite", name=f"shard-{index + 1}-of-{count}")
    failed = 0
    for test in mine:
        result = unittest.TestResult()
        test.run(result)
        classname, _, name = test.id().rpartition(".")
        case = ET.SubElement(suite, "testcase", classname=classname, name=name,
                             time="0")  # no clock in the output: rebuilds are bit for bit
        for kind, problems in (("failure", result.failures), ("error", result.errors)):
            for _, text in problems:
                failed += 1
                last = text.strip().splitlines()[-1]
                ET.SubElement(case, kind, message=last).text = text
                print(f"FAIL {test.id()}: {last}")
        for _, reason in result.skipped:
            ET.SubElement(case, "skipped", message=reason)
    suite.set("tests", str(len(mine)))
    ET.ElementTree(suite).write(junit_file, encoding="utf-8", xml_declaration=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
