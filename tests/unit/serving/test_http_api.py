"""The FastAPI app in process (Starlette's TestClient, no socket) over a real sample lake: the
400/401/404 JSON errors in the API's words, the schema at /docs, and /metrics in the
Prometheus exposition format labelled by route template."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from serving.api_metrics import bucket_quantile
from serving.http_api import bad_request_message, create_app
from serving.sample_lake import SampleLakeConfig, build
from serving.service import RecommendationService, ServingConfig

TOKEN = "unit-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    cfg = SampleLakeConfig(root / "lake", users=5, items=100, candidates=10, model=False)
    build(cfg)
    svc = RecommendationService.load(ServingConfig(cfg.root, (root / "db",),
                                                   secondary_dir=root / "sec", regenerate=False))
    with TestClient(create_app(svc, TOKEN)) as c:
        yield c
    svc.close()


def test_recommendations_with_the_token(client):
    r = client.get("/v1/recommendations/1?n=4&arm=saves", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert (body["user_id"], body["arm"], body["arm_source"], body["n"]) == (1, "saves", "requested", 4)
    assert [i["outcome"] for i in body["items"]] == ["repin"] * 4


@pytest.mark.parametrize("path,msg", [
    ("/v1/recommendations/abc", "user_id must be an integer, got 'abc'"),
    ("/v1/recommendations/1.5", "user_id must be an integer, got '1.5'"),
    ("/v1/recommendations/-3", "user_id must be non-negative, got -3"),
    ("/v1/recommendations/1?n=ten", "n must be an integer between 1 and 1000, got 'ten'"),
    ("/v1/recommendations/1?n=0", "n must be between 1 and 1000, got 0"),
    ("/v1/recommendations/1?n=1001", "n must be between 1 and 1000, got 1001"),
    ("/v1/recommendations/1?arm=nope", "unknown arm 'nope'; known arms: ['control', 'saves']"),
])
def test_bad_inputs_are_400_naming_the_field(client, path, msg):
    r = client.get(path, headers=AUTH)
    assert (r.status_code, r.json()) == (400, {"error": msg})


@pytest.mark.parametrize("path,got", [
    ("/v1/recommendations/", ""), ("/v1/recommendations/?n=3", ""), ("/v1/recommendations", ""),
    ("/v1/recommendations/%20", " "), ("/v1/recommendations/%20%09?n=3", " \t"),
])
def test_empty_or_blank_user_id_is_400_json_not_404(client, path, got):
    # the stdlib server this replaced answered 400 here; FastAPI had answered 404 "no route"
    r = client.get(path, headers=AUTH, follow_redirects=False)
    assert (r.status_code, r.headers["content-type"]) == (400, "application/json")
    assert r.json() == {"error": f"user_id is missing (got {got!r}): send GET "
                                 "/v1/recommendations/<user_id>, a non-negative integer"}


def test_empty_user_id_without_the_token_is_401_like_any_request(client):
    r = client.get("/v1/recommendations/")
    assert r.status_code == 401 and "missing or wrong bearer token" in r.json()["error"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": f"Basic {TOKEN}"}])
def test_missing_or_wrong_token_is_401_before_validation(client, headers):
    r = client.get("/v1/recommendations/abc", headers=headers)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "missing or wrong bearer token" in r.json()["error"]


def test_unknown_route_is_404_json(client):
    r = client.get("/v2/other")
    assert (r.status_code, r.json()) == (404, {"error": "no route /v2/other; see GET "
                                                        "/v1/recommendations/{user_id}"})


def test_health_needs_no_token_and_names_what_serves(client):
    for path in ("/healthz", "/health"):
        h = client.get(path).json()
        assert h["status"] == "ok" and h["arms"] == ["control", "saves"]
        assert h["regeneration"] is False and h["model_version"] is None


def test_openapi_schema_documents_the_route_and_its_bearer_scheme(client):
    schema = client.get("/openapi.json").json()
    op = schema["paths"]["/v1/recommendations/{user_id}"]["get"]
    assert {p["name"] for p in op["parameters"]} == {"user_id", "n", "arm", "query"}
    assert set(op["responses"]) >= {"200", "400", "401"}
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert client.get("/docs").status_code == 200


def metric_families(client) -> dict:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def request_counts(families) -> dict:
    return {(s.labels["route"], s.labels["status"]): s.value
            for s in families["pinrec_serve_requests"].samples if s.name.endswith("_total")}


def test_metrics_count_by_route_template_with_histograms(client):
    route = "/v1/recommendations/{user_id}"
    before = request_counts(metric_families(client))
    for u in (1, 2, 3):
        client.get(f"/v1/recommendations/{u}?n=2", headers=AUTH)
    client.get("/nowhere/42")
    families = metric_families(client)
    after = request_counts(families)
    assert after[(route, "200")] - before.get((route, "200"), 0) == 3
    assert after[("unmatched", "404")] - before.get(("unmatched", "404"), 0) == 1
    assert not any(r.startswith("/nowhere") or r.endswith("/1") for r, _ in after)
    count = next(s.value for s in families["pinrec_serve_request_duration_seconds"].samples
                 if s.name.endswith("_count") and s.labels["route"] == route)
    assert count == sum(v for (r, _), v in after.items() if r == route)
    quantiles = {s.labels["quantile"] for s in families["pinrec_serve_latency_ms"].samples
                 if s.labels["route"] == route}
    assert quantiles == {"0.50", "0.99"}
    assert "process_cpu_seconds" in families


def test_bucket_quantile_interpolates_like_histogram_quantile():
    # 10 at <= 1 ms, 10 more at <= 2 ms, none above: the median is the 1 ms bound, p75 halfway
    buckets = [(0.001, 10.0), (0.002, 20.0), (float("inf"), 20.0)]
    assert bucket_quantile(0.5, buckets) == pytest.approx(0.001)
    assert bucket_quantile(0.75, buckets) == pytest.approx(0.0015)
    assert bucket_quantile(0.99, [(0.001, 0.0), (float("inf"), 5.0)]) == 0.001  # past the last bound
    assert bucket_quantile(0.99, [(0.001, 0.0), (float("inf"), 0.0)]) == 0.0


def test_messages_for_other_fields_fall_back_to_pydantics():
    assert bad_request_message({"loc": ("query", "x"), "input": "1", "type": "t", "msg": "bad"}) \
        == "x: bad"
