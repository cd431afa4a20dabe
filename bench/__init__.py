"""imgproxy benchmark suite: every figure measured beside a reference taken in the same run.

Run from the repository root:

    make bench          # full run (250 MPix pyramid, ~3 min), writes bench/results.md
    make bench-quick    # smaller images, fewer samples (~1 min); bench/work/results-quick.md

or `.venv/bin/python -m bench [--quick] [--only 1,2,4]` (group 2 is figures 2 and 3).

1. cold first view (placeholder of a 24 MPix JPEG from a loopback http origin) vs a bare
   pyvips thumbnail of the same file (fig_cold.py);
2. whole pipeline (placeholder, display, zoom) of a 250 MPix JPEG vs a bare pyvips dzsave,
   and the server's peak RSS (fig_pipeline.py);
3. cached tile p99 while that image processes vs on the idle server (fig_pipeline.py);
4. cached tile requests/s at 64 keep-alive connections vs nginx and a bare aiohttp app
   (fig_throughput.py; a baseline without target).

Each run starts `imgproxy serve` with a generated TOML (servers.py). Test images are made
once with pyvips under bench/work/ (git-ignored, images.py) and reused; logs of every server
are kept in bench/work/logs/. All traffic stays on 127.0.0.1; every loop is bounded in count
and time, and the whole run in plan.budget seconds.
"""
