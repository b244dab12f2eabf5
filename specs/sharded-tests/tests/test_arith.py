import unittest


class Arithmetic(unittest.TestCase):
    def test_add(self):
        self.assertEqual(2 + 2, 4)

    def test_sub(self):
        self.assertEqual(5 - 3, 2)

    def test_mul(self):
        self.assertEqual(3 * 4, 12)

    def test_div(self):
        self.assertEqual(9 // 2, 4)


class Strings(unittest.TestCase):
    def test_upper(self):
        self.assertEqual("shard".upper(), "SHARD")

    def test_split(self):
        self.assertEqual("a b c".split(), ["a", "b", "c"])
