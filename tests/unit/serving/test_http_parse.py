"""URL validation of GET /v1/recommendations/{user_id} in the legacy stdlib server: clear 400
messages (the FastAPI server's, in the same words: test_http_api.py)."""
from __future__ import annotations

import pytest

from serving.http_api_legacy import parse_request
from serving.service import BadRequest


def test_parses_user_n_arm_and_query():
    assert parse_request("/v1/recommendations/42?n=7&arm=saves&query=red%20shoes") == \
        (42, 7, "saves", "red shoes")
    assert parse_request("/v1/recommendations/42") == (42, 50, None, None)


@pytest.mark.parametrize("path,msg", [
    ("/v1/recommendations/abc", "user_id must be an integer, got 'abc'"),
    ("/v1/recommendations/1.5", "user_id must be an integer"),
    ("/v1/recommendations/-3", "non-negative"),
    ("/v1/recommendations/1?n=ten", "n must be an integer between 1 and 1000, got 'ten'"),
])
def test_bad_inputs_name_the_field(path, msg):
    with pytest.raises(BadRequest, match=msg):
        parse_request(path)
