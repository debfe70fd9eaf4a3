"""The live server fuzzed from its own OpenAPI schema by schemathesis: uvicorn on loopback with
the trained test model, an index and an API key; every operation, through schemathesis's
coverage, fuzzing and stateful phases (the schema links a search result to the operations
that take its id). Checks: no 5xx, every answer's status, content type, headers and body as
the schema says, invalid input refused (4xx), the key not ignored, no answer slower than the
server's timeout. A short run here; ``-m slow`` runs at least 1,000 cases per operation.

``positive_data_acceptance`` is left out: random bytes are "a binary string" to the schema
but not an image, and no schema can say "a decodable PNG". ``negative_data_rejection`` is
left out for the form-only operations (caption, answer, attention): see CONFIG.
"""

import collections
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("schemathesis")
from serve_helpers import image_folder, index_of, serving  # noqa: E402

from tuwen.apps.access import Access  # noqa: E402
from tuwen.apps.limits import ServeSettings  # noqa: E402
from tuwen.apps.server import create_app  # noqa: E402

KEY = "fuzz-key-0123456789abcdef"
OPERATIONS = {"GET /v1/health", "POST /v1/caption", "POST /v1/answer", "POST /v1/attention",
              "POST /v1/search", "GET /v1/images/{image_id}"}
TIMEOUT_S = 30.0
# Every check of schemathesis but positive_data_acceptance (see the docstring). Per-operation
# settings only apply to checks chosen here, not to a --checks list on the command line.
CONFIG = """
[checks]
positive_data_acceptance.enabled = false
# refusals: bad input 400, no key 401, unknown id 404, past a limit 413, wrong type 415/422
negative_data_rejection.expected-statuses = [400, 401, 404, 413, 415, 422]
# the server's timeout; a 504 is a 5xx (a failure) and takes the timeout plus its delivery
max_response_time = {max_response_time}

[phases.stateful]
max-steps = {steps}

# A multipart form carries only text parts: a question "of another type" (false, 12, null)
# arrives as the text "false", "12", "null", a valid question, and an image_id "of type
# array" [] arrives as no part at all. Such type mutations cannot be refused, so
# negative_data_rejection is off for the three operations that take only forms (search keeps
# it: its JSON body has types; every other check holds for all).
[[operations]]
include-name = ["POST /v1/answer", "POST /v1/attention", "POST /v1/caption"]
checks.negative_data_rejection.enabled = false
"""


def st_command() -> list[str]:
    st = Path(sys.executable).with_name("st")
    return [str(st)] if st.exists() else [shutil.which("st") or "st"]


def fuzz(url: str, out: Path, examples: int, steps: int, seed: int = 1) -> dict:
    """Run schemathesis against ``url``; the run's cases per operation and its failures."""
    config = out / "schemathesis.toml"
    config.write_text(CONFIG.format(steps=steps, max_response_time=TIMEOUT_S + 1))
    command = [*st_command(), "--config-file", str(config), "run", f"{url}/openapi.json",
               "-H", f"Authorization: Bearer {KEY}",
               # the client waits past the server's timeout, for its 504 if one comes
               "--request-timeout", str(TIMEOUT_S + 10), "-n", str(examples), "--seed", str(seed),
               "--workers", "1", "--continue-on-failure", "--generation-database", "none",
               "--no-color", "--report", "ndjson,json", "--report-dir", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, cwd=out,
                          env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"})
    return summary(out, done.returncode, done.stdout)


def summary(out: Path, returncode: int, log: str) -> dict:
    """Cases per operation (declared method only: the probes of other methods are counted
    apart), the failures by check, and the run report."""
    cases, probes, failures = collections.Counter(), collections.Counter(), []
    for line in next(out.glob("ndjson-*.ndjson")).read_text().splitlines():
        (kind, event), = json.loads(line).items()
        if kind != "ScenarioFinished":
            continue
        recorder = event["recorder"]
        for case_id, node in recorder.get("cases", {}).items():
            case = node["value"]
            label = f"{case['method']} {case['path']}"
            (cases if label in OPERATIONS else probes)[label] += 1
            for check in recorder.get("checks", {}).get(case_id, []):
                if check["status"] != "success":
                    failures.append(f"{event['phase']}: {label}: {check['name']}")
    report = json.loads(next(out.glob("json-*.json")).read_text())
    return {"cases": dict(cases), "probes": sum(probes.values()), "failures": failures,
            "report": report, "returncode": returncode, "log": log[-6000:]}


@pytest.fixture(scope="module")
def live(pipeline, trained_run, tiny_shapes, tmp_path_factory):
    """The keyed server with an index of 8 images, on 127.0.0.1."""
    images = image_folder(tiny_shapes, tmp_path_factory, 8, "fuzz_images")
    index = index_of(pipeline, trained_run, images, tmp_path_factory)
    app = create_app(pipeline, index, ServeSettings(timeout_s=TIMEOUT_S), Access(KEY))
    with serving(app) as url:
        yield url


def check(result: dict, at_least: int) -> None:
    assert result["failures"] == [], result["log"]
    assert result["returncode"] == 0, result["log"]
    assert result["report"]["errors"] == [] and result["report"]["complete"]
    assert set(result["cases"]) == OPERATIONS, result["cases"]
    # the health check takes no input: one request is every request it can be sent
    assert all(n >= at_least for op, n in result["cases"].items() if op != "GET /v1/health"), \
        result["cases"]


def test_a_short_fuzz_finds_nothing(live, tmp_path):
    result = fuzz(live, tmp_path, examples=8, steps=4)
    check(result, at_least=8)
    print(json.dumps({"cases": result["cases"], "probes": result["probes"]}))


@pytest.mark.slow  # about a quarter of an hour on a loaded 2-core machine
def test_a_thousand_cases_per_operation_find_nothing(live, tmp_path):
    result = fuzz(live, tmp_path, examples=1000, steps=20)
    print(json.dumps({"cases": result["cases"], "probes": result["probes"],
                      "generated": result["report"]["test_cases"]}))
    check(result, at_least=1000)
