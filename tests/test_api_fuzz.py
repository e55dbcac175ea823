"""The API fuzzed from its own OpenAPI document (schemathesis): no input may produce a server
error, and every answer has a documented status, content type and shape. Bounded: a few dozen
examples per operation, well under a minute."""

from __future__ import annotations

import dataclasses

import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from livedata import png
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from serving import make_collection

from iwan.config import settings
from iwan.serve import create_app

KEY = "fuzz-key"
EXAMPLES_PER_OPERATION = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

pytestmark = pytest.mark.usefixtures("in_module_home")


@pytest.fixture(scope="module")
def api(module_database_url, module_home, one_torch_thread):
    engine = sa.create_engine(module_database_url)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IWAN_HOME", str(module_home))
        collection = make_collection(engine, module_home, "pics", [(f"img{i}.png", png(i)) for i in range(8)])
    app = create_app(engine, [collection], settings=dataclasses.replace(settings(), api_key=KEY))
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    collection.close()
    engine.dispose()


def test_no_input_makes_a_server_error(api):
    """Every operation, positive and negative examples (schemathesis' default generation)."""
    tried = []
    for result in api.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @hypothesis_settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                             suppress_health_check=list(HealthCheck))
        def fuzz(case):
            response = case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"}, checks=CHECKS)
            assert response.status_code < 500 or response.status_code == 503, response.text

        fuzz()
        tried.append(operation.label)
    assert len(tried) == 10, tried
