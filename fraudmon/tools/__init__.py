"""Tools on top of every layer: the local stack, producing, the demo, the benchmark, the chaos suite, reading
output topics, and the harness that starts and stops workers. Only `fraudmon.cli` imports these."""
