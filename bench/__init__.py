"""imgproxy benchmark suite: every figure measured beside a reference taken in the same run.

Run from the repository root:

    make bench          # full run (~6-9 min on 2 cores), writes bench/results.md
    make bench-quick    # smaller sets, fewer samples (~1 min); bench/work/results-quick.md

or `.venv/bin/python -m bench [--quick] [--only 2,6,7]` (figure numbers or group names; a
partial run writes bench/work/results-only.md). Figures are numbered as in issue 7:

1. whole pipeline (placeholder, display, zoom) of a 250 MPix JPEG vs a bare pyvips dzsave,
   and the server's peak RSS; 1b. cached tile p99 while it processes vs on the idle server
   (fig_pipeline.py);
2. time to placeholder of a cold view of 24 MPix JPEGs from a loopback http origin vs
   thumbor's cold `/unsafe/1280x0/<url>` of the same files (fig_cold.py);
3. time to display (`?w=1280` served as display) of the same cold views vs the same thumbor
   figure (fig_cold.py);
4. cached tiles (>= 1,000 distinct URLs) and renditions, requests/s and p99 at 64 keep-alive
   connections with wrk, vs nginx (sendfile) on the same files; a bare aiohttp app as a
   baseline (fig_throughput.py);
5. cold first view (the placeholder) vs a bare pyvips thumbnail, <= 300 ms (fig_cold.py);
6. migration: 500 distinct 2 MPix JPEGs through /v2/images/add, images ready per second, vs
   a bare pyvips loop making the same outputs with the same parallelism; and issue 4's
   answer time of one /v2/images/add of 1,000 URLs vs a bare JSON echo (fig_migration.py);
7. thundering herd: 1,000 concurrent cold requests of one ID, origin fetches and the time
   until all have an answer (fig_herd.py);
8. server RSS after start-up and after figure 4's load (fig_throughput.py).

The references are installed when missing (install.py): nginx and wrk with apt-get, thumbor
7.8 from PyPI in its own venv, bench/work/thumbor-venv. Each run starts `imgproxy serve` with
a generated TOML (servers.py). Test images are made once with pyvips under bench/work/
(git-ignored, images.py) and reused; logs of every server are kept in bench/work/logs/. All
traffic stays on 127.0.0.1; every loop is bounded in count and time, and the whole run in
plan.budget seconds.
"""
