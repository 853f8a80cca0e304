"""The numbers computed from samples: one window's distribution and its interval (summary),
where an exit's cycles go (decompose), and which percentiles another path may hold (otherpath).
Across VM runs, what people read as headlines: exitlat.report.vmruns."""
