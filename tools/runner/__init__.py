"""The accuracy runner: the protocol's tables as independent, resumable jobs (issue #11).

`tables` declares the tables, `jobs` expands them into jobs and the bundle commands each runs,
`execute` runs jobs (train, evaluate, one result file each), `aggregate` builds the markdown and
JSON tables, `background` starts, watches and stops runners. Command line: `python -m tools.runner`
from the repository root (README.md in this folder).
"""
