"""The result bundle, the product every later step reads: its document format and schema
(format), the run → document step (assemble), writing a folder that is complete or absent
(write), checking (check) and reading (read) it, and the one-file archive (archive)."""
