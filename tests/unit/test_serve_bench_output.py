"""`pinrec bench serve` prints rows only for the phases it ran: a phase not asked for used to
print a blank row with "errors 1", read as a failure (bench/serve_bench.py, serve_servers.py)."""
from argparse import Namespace

from bench.serve_bench import print_phases, summarize
from bench.serve_servers import print_servers

ARGS = Namespace(rate=200.0, regen_fraction=0.1)


def phase(latencies_ms, status=200):
    rows = [(u, lat, lat / 2, status, False) for u, lat in enumerate(latencies_ms)]
    return summarize(rows)


def test_no_phase_run_prints_nothing(capsys):
    print_phases(ARGS, None, None, None, None)
    assert capsys.readouterr().out == ""


def test_only_the_phases_that_ran_get_rows(capsys):
    print_phases(ARGS, None, None, phase([10.0, 20.0]), phase([1.0, 2.0]))
    out = capsys.readouterr().out
    assert "regenerating requests (10% of 200/s)" in out and "other requests" in out
    assert "precomputed + RocksDB" not in out and "floor" not in out
    assert "errors" not in out
    assert "HTTP handler p99 inside the server (incl. warm-up): regeneration phase nan ms" in out


def test_errors_are_printed_for_a_phase_that_ran_with_errors(capsys):
    print_phases(ARGS, phase([1.0, 2.0, 3.0], status=500), None, None, None)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("precomputed")]
    assert len(rows) == 1 and rows[0].endswith("errors 3")


def test_servers_phase_prints_one_row_per_load_of_the_one_server(capsys):
    load = {k: {"median": 1.0, "min": 1.0, "max": 1.0} for k in
            ("p50_ms", "p99_ms", "server_p99_ms", "server_cores")}
    res = {"fastapi": {"precomputed": {**load, "errors": 0, "contended_runs": 0},
                       "regenerate": {**load, "errors": 0, "contended_runs": 0}},
           "bars_hold": {"fastapi_precomputed": True, "fastapi_regenerate": True}}
    print_servers(res)
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [r.split()[:2] for r in rows] == [["fastapi", "precomputed"], ["fastapi", "regenerate"]]
    assert all(r.endswith("holds") for r in rows)
