"""The study report where MLflow users read it: report.html on the study's parent run, opened on
the MLflow UI's artifact page of a real `mlflow server` in headless Chromium (Selenium), asserting
on the rendered page (the UI shows the report in an iframe: the figures are decoded images, the
front table holds the front's trials)."""

from __future__ import annotations

import shutil

import pytest

from study import Study
from study.analysis.front import best_trials
from tests.test_study import DIGITS
from tests.test_tracking import mlflow_server

pytestmark = pytest.mark.slow

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs Chromium and chromedriver (Debian: apt-get install chromium chromium-driver; "
    "make test installs them where apt is at hand)",
)


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.binary_location = CHROMIUM
    return webdriver.Chrome(options=options, service=Service(DRIVER))


@needs_browser
def test_the_report_renders_in_the_mlflow_ui(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with mlflow_server(tmp_path / "server") as (url, _):
        space = {
            "fixed": {**DIGITS, "epochs": 1},
            "points": [{"method": "sgd"}, {"method": "sam"}, {"method": "csam", "gamma": 1}],
            "sampler": "random",
        }
        study = Study.create(space, name="ui", storage=str(tmp_path / "studies"), tracking_uri=url)
        study.run()
        info = study.tracking()
        front = sorted(str(t.number) for t in best_trials(study.optuna()))
        page = (
            f"{url}/#/experiments/{info['experiment_id']}/runs/{info['parent_run_id']}"
            "/artifacts/report/report.html"
        )
        browser = _browser()
        try:
            browser.get(page)
            wait = WebDriverWait(browser, 90)
            frame = wait.until(lambda b: b.find_elements(By.TAG_NAME, "iframe"))[0]
            browser.switch_to.frame(frame)
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "img[data-file='pareto.png']"))
            assert browser.find_element(By.TAG_NAME, "h1").text == "Study report: ui"
            pareto = browser.find_element(By.CSS_SELECTOR, "img[data-file='pareto.png']")
            width = browser.execute_script("return arguments[0].naturalWidth", pareto)
            assert width > 100 and pareto.size["height"] > 50  # decoded and laid out
            heading = browser.find_element(By.XPATH, "//h2[text()='Pareto front']")
            table = heading.find_element(By.XPATH, "following-sibling::table[1]")
            cells = [
                row.find_elements(By.TAG_NAME, "td")[0].text
                for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")
            ]
            assert sorted(cells) == front
        finally:
            browser.quit()
