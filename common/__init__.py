"""The small core every room of this project stands on: user errors, paths over one filesystem layer
(local and gs://), the one publish protocol, and the command-line entry helper.

It imports nothing of this project, and nothing heavy at import time.
"""
