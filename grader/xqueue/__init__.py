"""The Open edX door: a pull worker that grades notebooks from an XQueue (``mbgd-grader xqueue``).

`contract` reads and writes the XQueue messages (no I/O), `feedback` renders the result as the
well-formed fragment the LMS shows, `client` speaks the REST contract over HTTP, `journal`
keeps pulled-but-unanswered submissions across crashes, and `worker` runs the loop.
"""
