"""What people read: a learner's results.json and feedback page (`feedback`), the picture of
their curves against the reference (`plot`), the class summary (`summary`), and the process
that writes report folders behind the grading (`writer`). Imports `grader.models` only (and
the reference for the expected curves)."""
