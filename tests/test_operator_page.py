"""The operator page in a real headless Chromium, against a proxy on the real local model with
the monitor on (every request sampled and shadowed, texts stored, the model judging itself, the
canary probing): sign in, read the figures, filter and open samples, record a label, edit a
profile, and save a screenshot of the main view at 1280×800.

SmolLM2-135M is weak and its judges often fail: this asserts what the page shows against what the
admin API says, never that a figure is good."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from proxy.local_model import MODEL_ALIAS
from tests.browser import Browser, require_chromium
from tests.conftest import ADMIN_KEY, CLIENT_KEY, ROOT, RunningProxy, wait_for

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
STYLE = "Answer in one short sentence, like a pirate."
UNITS = "Give distances in kilometres."
QUESTIONS = ["How far is the Moon from the Earth?", "Name a large river in Africa.", "What is the capital of France?"]
SCREENSHOT = ROOT / ".perg" / "operator-page.png"


def admin(proxy: RunningProxy, path: str, **params: Any) -> Any:
    response = httpx2.get(f"{proxy.url}{path}", params=params, headers=ADMIN, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def monitored_proxy(start_proxy, local_model, tmp_path: Path) -> RunningProxy:
    return start_proxy(
        upstreams=[{"name": "local", "base_url": local_model.base_url, "structured_output": "json_object_schema"}],
        personalization={"default_strategy": "pref_aligner"},
        profiles={"backend": "sqlite", "path": str(tmp_path / "profiles.db")},
        monitor={
            "enabled": True, "sample_rate": 1.0, "shadow_rate": 1.0, "workers": 1, "store_samples": True,
            "judge": {"max_tokens": 120, "timeout_seconds": 120},
            "canary": {"enabled": True, "interval_seconds": 3600, "items_per_run": 1, "model": MODEL_ALIAS, "settings": ["relevant"]},
        },
    )  # fmt: skip


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    require_chromium()
    started = Browser(tmp_path / "browser")
    yield started
    started.stop()


def send_traffic(proxy: RunningProxy) -> int:
    """Personalized requests on the real model: a stored profile (by `user`), the extension with
    Pref-Aligner, and naive; the number sent."""
    httpx2.put(f"{proxy.url}/perg/profiles/ann", json={"preferences": [STYLE, UNITS]}, headers=ADMIN, timeout=30).raise_for_status()
    options = {"model": MODEL_ALIAS, "max_tokens": 40, "temperature": 0, "seed": 1}
    with openai.OpenAI(base_url=proxy.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=180) as client:
        sent = [
            client.chat.completions.create(messages=[{"role": "user", "content": QUESTIONS[0]}], user="ann", **options),
            client.chat.completions.create(
                messages=[{"role": "user", "content": QUESTIONS[1]}], extra_body={"personalization": {"preferences": [UNITS]}}, **options
            ),
            client.chat.completions.create(
                messages=[{"role": "user", "content": QUESTIONS[2]}],
                extra_body={"personalization": {"preferences": [STYLE], "strategy": "naive"}},
                **options,
            ),
        ]
    assert all(reply.choices[0].message.content for reply in sent)
    return len(sent)


def judged_everything(proxy: RunningProxy, expected: int) -> bool:
    """Every request's served and shadow sample is stored, and the canary has probed."""
    groups = admin(proxy, "/perg/monitor/summary", window_seconds=900)["groups"]
    canary = admin(proxy, "/perg/monitor/process")["canary"]["total"]
    return sum(group["samples"] for group in groups) >= expected and canary["probes"] > 0


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


@pytest.mark.local_model
@pytest.mark.timeout(1200)
def test_operator_page_end_to_end(monitored_proxy, browser):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    proxy = monitored_proxy
    started = time.monotonic()
    sent = send_traffic(proxy)
    answered = time.monotonic()
    assert wait_for(lambda: judged_everything(proxy, 2 * sent), timeout=900, interval=2), admin(proxy, "/perg/monitor/summary")
    print(
        f"\n{sent} requests answered in {answered - started:.0f} s, judged (and the canary probed) {time.monotonic() - answered:.0f} s later"
    )
    driver = browser.driver
    wait = WebDriverWait(driver, 60, ignored_exceptions=(StaleElementReferenceException,))  # the page re-renders as it loads

    def text(element_id: str) -> str:
        return driver.find_element(By.ID, element_id).text

    # Sign in: a wrong key is refused, the right one is kept in sessionStorage only.
    driver.get(f"{proxy.url}/perg/ui")
    wait.until(lambda d: d.find_element(By.ID, "admin-key").is_displayed())
    driver.find_element(By.ID, "admin-key").send_keys("not-the-key")
    driver.find_element(By.ID, "sign-in").click()
    wait.until(lambda d: "Incorrect admin key" in text("login-error"))
    refused = browser.console_errors()  # the one failed request, logged by the browser
    assert len(refused) == 1 and "/perg/monitor/summary" in refused[0] and "401" in refused[0], refused
    driver.find_element(By.ID, "admin-key").clear()
    driver.find_element(By.ID, "admin-key").send_keys(ADMIN_KEY)
    driver.find_element(By.ID, "sign-in").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#rates-table tbody tr"))
    assert driver.execute_script("return sessionStorage.getItem('perg-proxy.admin-key')") == ADMIN_KEY
    assert driver.execute_script("return [localStorage.length, document.cookie]") == [0, ""]
    assert ADMIN_KEY not in driver.current_url

    # The main view: the counts the admin API gives, non-zero.
    Select(driver.find_element(By.ID, "window")).select_by_value("900")
    summary = admin(proxy, "/perg/monitor/summary", window_seconds=900)
    judged = sum(group["judged"] for group in summary["groups"])
    comparable = judged - sum(group["uncomparable"] for group in summary["groups"])
    sampled = sum(group["samples"] for group in summary["groups"])
    wait.until(lambda d: text("card-judged") == f"Judged samples\n{judged}\n{comparable} comparable · {sampled} sampled")
    assert sampled >= 2 * sent
    rows = driver.find_elements(By.CSS_SELECTOR, "#rates-table tbody tr")
    # a group is a strategy, a role and the judges' fingerprint (a re-judge is a group of its own)
    names = [f"{g['strategy']} · {g['role']}" + (f" · judges {g['fingerprint']}" if g["fingerprint"] else "") for g in summary["groups"]]
    assert sorted(row.get_attribute("data-group") for row in rows) == sorted(names)
    assert all(g["fingerprint"] for g in summary["groups"])
    for row, group in zip(rows, sorted(summary["groups"], key=lambda g: (g["strategy"], g["role"])), strict=True):
        assert row.find_element(By.CSS_SELECTOR, ".judged").text == str(group["judged"])
        assert row.find_element(By.CSS_SELECTOR, ".comparable").text == str(group["judged"] - group["uncomparable"])
        assert row.find_element(By.CSS_SELECTOR, ".missing").text == str(group["judge_failed"] + group["follow_missing"])
    assert len(driver.find_elements(By.CSS_SELECTOR, "#charts svg.chart")) == 3
    # A dot per rate for each group and bucket with comparable samples (the page fetched its own
    # series a moment earlier: a sample may since have crossed into the next bucket).
    series = admin(proxy, "/perg/monitor/series", window_seconds=900, buckets=24)
    rated = sum(point["breakage_rate"] is not None for group in series["groups"] for point in group["points"])
    dots = len(driver.find_elements(By.CSS_SELECTOR, "#charts circle.dot"))
    assert dots % 3 == 0 and (dots > 0) == (rated > 0) and abs(dots - 3 * rated) <= 3 * len(series["groups"]), (dots, series)
    print(f"summary groups: {summary['groups']}")
    canary = admin(proxy, "/perg/monitor/process")["canary"]["total"]
    probed = [int(cell.text) for cell in driver.find_elements(By.CSS_SELECTOR, "#canary-table tbody tr:not(.total) td:nth-child(2)")]
    assert sum(probed) == canary["probes"] > 0
    assert "depth" in text("process") and "enqueued (served)" in text("process")
    assert "Judge agreement with labels" in text("process")
    driver.execute_script("document.activeElement.blur()")
    time.sleep(0.5)  # let the charts settle before the picture
    driver.save_screenshot(str(SCREENSHOT))
    assert png_size(SCREENSHOT) == (1280, 800)
    print(f"\noperator page screenshot: {SCREENSHOT}")

    # Samples: filtered by strategy and role, then by a verdict that exists; the list matches the API.
    driver.find_element(By.ID, "tab-samples").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#samples-body tr"))
    Select(driver.find_element(By.ID, "filter-strategy")).select_by_value("pref_aligner")
    Select(driver.find_element(By.ID, "filter-role")).select_by_value("served")
    expected = admin(proxy, "/perg/monitor/samples", strategy="pref_aligner", role="served", limit=25)["data"]
    assert expected
    wait.until(
        lambda d: [r.get_attribute("data-id") for r in d.find_elements(By.CSS_SELECTOR, "#samples-body tr")] == [s["id"] for s in expected]
    )
    verdict = next((s["verdict"] for s in expected if s["verdict"]), None)
    if verdict is not None:
        Select(driver.find_element(By.ID, "filter-verdict")).select_by_value(verdict)
        wanted = [s["id"] for s in expected if s["verdict"] == verdict]
        wait.until(lambda d: [r.get_attribute("data-id") for r in d.find_elements(By.CSS_SELECTOR, "#samples-body tr")] == wanted)
    # Open one: its texts, the diff of draft and answer, the judges; then label it.
    row = driver.find_element(By.CSS_SELECTOR, "#samples-body tr")
    sample_id = row.get_attribute("data-id")
    row.click()
    wait.until(lambda d: d.find_elements(By.ID, "label-form"))
    sample = admin(proxy, f"/perg/monitor/samples/{sample_id}")
    detail = text("sample-detail")
    assert sample["texts"]["query"] in detail and sample["texts"]["preferences"][0] in detail
    diff = driver.find_element(By.ID, "sample-diff")
    shown = driver.execute_script(
        "const el = arguments[0]; const keep = (node, drop) => [...node.childNodes].map(n => n.nodeType === 3 ? n.data :"
        " n.localName === drop ? '' : keep(n, drop)).join(''); return [keep(el, 'ins'), keep(el, 'del')];",
        diff,
    )
    assert shown == [sample["texts"]["reference"], sample["texts"]["answer"]], "the diff holds both texts exactly"
    driver.find_element(By.CSS_SELECTOR, "#label-form input[name=label-score][value='2']").click()
    Select(driver.find_element(By.ID, "label-consistency")).select_by_value("contradicts")
    driver.find_element(By.ID, "label-save").click()
    wait.until(lambda d: "saved" in text("label-status"))
    labels = admin(proxy, f"/perg/monitor/samples/{sample_id}")["labels"]
    assert [(label["follow_score"], label["consistency"]) for label in labels] == [(2, "contradicts")]
    assert "follow 2 / 5, contradicts" in text("sample-labels")

    # Profiles: open ann, add a preference, remove one; the store says the same.
    driver.find_element(By.ID, "tab-profiles").click()
    driver.find_element(By.ID, "profile-user").send_keys("ann")
    driver.find_element(By.CSS_SELECTOR, "#profile-search button").click()
    wait.until(lambda d: UNITS in text("profile-detail"))
    driver.find_element(By.ID, "pref-new").send_keys("Mention one fun fact.")
    driver.find_element(By.CSS_SELECTOR, "#pref-add button").click()
    wait.until(lambda d: "Preference added." in text("profile-status"))
    assert [p["text"] for p in admin(proxy, "/perg/profiles/ann")["preferences"]] == [STYLE, UNITS, "Mention one fun fact."]
    first = admin(proxy, "/perg/profiles/ann")["preferences"][0]["id"]
    driver.find_element(By.CSS_SELECTOR, f"#profile-prefs li[data-id='{first}'] button.remove").click()
    wait.until(lambda d: "Preference removed." in text("profile-status"))
    assert [p["text"] for p in admin(proxy, "/perg/profiles/ann")["preferences"]] == [UNITS, "Mention one fun fact."]

    assert browser.console_errors() == []
    driver.find_element(By.ID, "logout").click()
    wait.until(lambda d: d.find_element(By.ID, "login").is_displayed())
    assert driver.execute_script("return sessionStorage.length") == 0


HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'


def test_stored_text_is_shown_as_text_and_never_runs(start_proxy, browser, tmp_path):
    """Samples and profiles hold user text: the page shows it literally and runs none of it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from proxy.preferences import JudgedSample, SampleTexts
    from proxy.server.services import SERVICES

    proxy = start_proxy(monitor={"enabled": True, "store_samples": True})
    texts = SampleTexts(query=HOSTILE, preferences=(HOSTILE,), reference="The answer is B.", answer=f"The answer is B. {HOSTILE}")
    sample = JudgedSample(
        request_id="r", model="m", strategy="pref_aligner", role="served", relevance="relevant", verdict="consistent",
        broken=False, followed=True, robust=True, follow_score=4, reasons={"consistency": HOSTILE}, texts=texts,
    )  # fmt: skip
    store = proxy.server.call(proxy.server.app[SERVICES].store.get())
    proxy.server.call(store.add_sample(sample))
    httpx2.put(f"{proxy.url}/perg/profiles/x", json={"preferences": [HOSTILE]}, headers=ADMIN, timeout=10).raise_for_status()
    driver = browser.driver
    wait = WebDriverWait(driver, 30)
    driver.get(f"{proxy.url}/perg/ui")
    wait.until(lambda d: d.find_element(By.ID, "admin-key").is_displayed())
    driver.find_element(By.ID, "admin-key").send_keys(ADMIN_KEY)
    driver.find_element(By.ID, "sign-in").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#rates-table tbody tr"))
    driver.find_element(By.ID, "tab-samples").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#samples-body tr"))
    driver.find_element(By.CSS_SELECTOR, "#samples-body tr").click()
    wait.until(lambda d: d.find_elements(By.ID, "label-form"))
    detail = driver.find_element(By.ID, "sample-detail")
    assert detail.text.count(HOSTILE) == 4  # query, preference, the diff's insertion, the judge's reason
    assert driver.find_elements(By.CSS_SELECTOR, "#sample-detail img, #sample-detail script") == []
    assert driver.find_element(By.CSS_SELECTOR, "#sample-diff ins").text.endswith(HOSTILE)
    driver.find_element(By.ID, "tab-profiles").click()
    driver.find_element(By.ID, "profile-user").send_keys("x")
    driver.find_element(By.CSS_SELECTOR, "#profile-search button").click()
    wait.until(lambda d: HOSTILE in d.find_element(By.ID, "profile-detail").text)
    assert driver.find_elements(By.CSS_SELECTOR, "main img, main script") == []
    assert driver.execute_script("return window.pwned === undefined")
    assert browser.console_errors() == []
