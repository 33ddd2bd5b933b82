"""Course platforms' autograders: the packages `mbgd-grader export` writes (a Gradescope zip,
a Coursera grader folder) and the entry points they run per submission
(`mbgd-grader gradescope`, `mbgd-grader coursera`). A door: it grades through
`grader.pipeline` and writes the platform's own result files.
"""
