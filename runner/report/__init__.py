"""What a run reports to people and programs: JUnit results, the event stream, the HTML report."""
