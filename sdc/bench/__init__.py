"""Side-by-side benchmarking: `sdc bench` runs each submodel through every variant in its own process.

run.py sequences a bench, prepare.py writes inputs and builds bundles, worker.py is the per-variant
process, flops.py counts graph FLOPs and measures GEMM throughput, report.py prints and writes results.
"""
