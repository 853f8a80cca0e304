"""What people read of bundles: the headlines across VM runs (vmruns), the terminal report
(text), compare, plots, the HTML page, CSV, and the Invoke commands that show them (cli,
taskargs)."""
