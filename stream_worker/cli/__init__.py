"""The `streamrec` command line: thin commands over the role packages; common.py holds settings loading, `fail`
and exit codes.
"""
