"""Judge fingerprints, `perg-proxy monitor rejudge`, and κ from the operators' labels: a changed
follow prompt re-judges the stored samples into a second fingerprint, the summary reports the two
apart, the labels calibrate both, and `perg_monitor_judge_agreement{judge}` exports the current κ.
The judges are the scripted fake upstream; the store is a SQLite file the proxy and the command share."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import httpx2
import orjson
import yaml

from tests.conftest import ADMIN_KEY, CLIENT_KEY, UPSTREAM_KEY, wait_for
from tests.fake_upstream import FakeUpstream, pipeline_role

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
STYLE = "Answer in the style of a pirate."
NEW_RUBRIC = "Be strict: a partial lapse is a 2."


def judges(body: dict[str, Any]) -> str:
    """Consistent, relevant; follow 4 with the shipped rubric, 2 with the changed one."""
    role = pipeline_role(body)
    if role == "judge_consistency":
        return '{"reason": "r", "verdict": "consistent"}'
    if role == "judge_follow":
        strict = any(NEW_RUBRIC in message["content"] for message in body["messages"])
        return orjson.dumps({"reason": "r", "score": 2 if strict else 4}).decode()
    return '{"reason": "r", "relevant": true}'


def monitor_settings(tmp_path: Path, **judge: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "sample_rate": 1.0,
        "workers": 1,
        "store_samples": True,
        "judge": {"model": "script:judges", "max_retries": 0, **judge},
    }


def chat(proxy: Any, request_id: str) -> None:
    body = {"model": "echo", "messages": [{"role": "user", "content": "What is 2 + 2?"}], "personalization": {"preferences": [STYLE]}}
    headers = {"Authorization": f"Bearer {CLIENT_KEY}", "X-Request-ID": request_id}
    assert httpx2.post(f"{proxy.base_url}/chat/completions", json=body, headers=headers, timeout=30).status_code == 200


def summary(proxy: Any) -> list[dict[str, Any]]:
    return httpx2.get(f"{proxy.url}/perg/monitor/summary", headers=ADMIN, timeout=10).json()["groups"]


def rejudge(config: Path, *args: str) -> str:
    command = [sys.executable, "-m", "proxy", "monitor", "rejudge", "--config", str(config), "--since", "1h", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_judge_change_is_a_second_fingerprint_and_the_labels_calibrate_both(tmp_path, start_proxy, fake_upstream: FakeUpstream):
    fake_upstream.scripts["judges"] = judges
    profiles = {"backend": "sqlite", "path": str(tmp_path / "profiles.db")}
    proxy = start_proxy(profiles=profiles, monitor=monitor_settings(tmp_path))
    ids = [f"rejudge-{i}" for i in range(3)]
    for request_id in ids:
        chat(proxy, request_id)
    assert wait_for(lambda: sum(group["samples"] for group in summary(proxy)) == 3, timeout=20)
    [before] = summary(proxy)
    assert before["fingerprint"] and before["samples"] == 3

    samples = httpx2.get(f"{proxy.url}/perg/monitor/samples", headers=ADMIN, timeout=10).json()["data"]
    assert {sample["fingerprint"] for sample in samples} == {before["fingerprint"]}
    assert set(samples[0]["judges"]) == {"relevance", "consistency", "follow"}
    # the operators say: follow 2 on every sample (the shipped judge said 4), consistent
    for sample in samples:
        label = {"follow_score": 2, "consistency": "consistent"}
        assert (
            httpx2.post(f"{proxy.url}/perg/monitor/samples/{sample['id']}/label", json=label, headers=ADMIN, timeout=10).status_code == 200
        )
    assert proxy.metric("perg_monitor_judge_agreement_labels", {"judge": "follow"}) == 3
    assert proxy.metric("perg_monitor_judge_agreement_labels", {"judge": "consistency"}) == 3

    # the follow prompt changes: the same system text, one more rule in the user template
    prompt = tmp_path / "judge_follow.txt"
    prompt.write_text(resources.files("proxy.prompts").joinpath("judge_follow.txt").read_text() + "\n" + NEW_RUBRIC + "\n")
    config = tmp_path / "changed.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "upstreams": [{"name": "main", "base_url": fake_upstream.url, "api_key": UPSTREAM_KEY}],  # type: ignore[attr-defined]
                "profiles": profiles,
                "monitor": monitor_settings(tmp_path, prompts={"follow": str(prompt)}),
                "logging": {"level": "warning"},
            }
        )
    )
    out = rejudge(config, "--judge", "follow")
    assert "stored 3" in out, out
    groups = summary(proxy)
    by_fingerprint = {group["fingerprint"]: group for group in groups}
    assert len(by_fingerprint) == 2 and by_fingerprint[before["fingerprint"]] == before  # the old figures untouched
    [new] = [group for fingerprint, group in by_fingerprint.items() if fingerprint != before["fingerprint"]]
    assert new["samples"] == 3 and new["not_followed"] == 3  # score 2 < follow_threshold 3
    assert "stored 0" in rejudge(config, "--judge", "follow")  # twice is harmless

    stored = httpx2.get(f"{proxy.url}/perg/monitor/samples?limit=10", headers=ADMIN, timeout=10).json()["data"]
    assert sorted(s["request_id"] for s in stored) == sorted(ids * 2)
    rejudged = [s for s in stored if s["fingerprint"] == new["fingerprint"]]
    assert all(s["follow_score"] == 2 and s["labels"] == [] for s in rejudged)
    assert {s["judges"]["consistency"] for s in stored} == {before_judges := samples[0]["judges"]["consistency"]}
    assert {s["judges"]["follow"] for s in rejudged} != {before_judges}

    # κ per judge and fingerprint: the labels on the old samples also calibrate the re-judged verdicts
    process = httpx2.get(f"{proxy.url}/perg/monitor/process", headers=ADMIN, timeout=10).json()
    rows = {(row["judge"], row["fingerprint"]): row for row in process["agreement"]["fingerprints"]}
    old_follow, new_follow = samples[0]["judges"]["follow"], rejudged[0]["judges"]["follow"]
    assert rows[("follow", old_follow)]["labels"] == 3 and rows[("follow", old_follow)]["exact_agreement"] == 0
    assert rows[("follow", new_follow)]["labels"] == 3 and rows[("follow", new_follow)]["exact_agreement"] == 1
    # the serving proxy's current follow judge is still the shipped one: its κ is exported
    assert process["agreement"]["current"]["follow"]["fingerprint"] == old_follow
    assert proxy.metric("perg_monitor_judge_agreement_labels", {"judge": "follow"}) == 3
