"""Tests of openface_py.service (the web page).

The web page at `/`, driven in a real headless Chromium (Selenium + the system's chromedriver)
against a real server: upload photos and read the names off the page, enroll and delete a person;
the People view over a clustered collection: cards largest first with thumbnails, name a
cluster, remove a wrong face, merge two (each checked through the API)."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest
from conftest import CLUSTERED, EXAMPLES, SAMPLE, cli, copy_db
from test_service import KEY, Server

webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e '.[test]')")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Chromium and chromedriver (apt-get install chromium chromium-driver; .ci/run installs them)",
)


@pytest.fixture(scope="module", autouse=True)
def home(empty_home):
    return empty_home


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,900"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(sample_db, tmp_path_factory):
    """A server over a copy of the session's database of photos 1-8 of each sample person."""
    db = copy_db(sample_db[0], tmp_path_factory.mktemp("page"))
    s = Server(db)
    s.db = db
    yield s
    s.stop()


def wait(driver, condition, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def names_after_upload(driver, photo) -> list[str]:
    from selenium.webdriver.common.by import By

    driver.execute_script("document.getElementById('names').innerHTML = ''")
    driver.find_element(By.ID, "photo").send_keys(str(photo))
    wait(
        driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#names li") or d.find_element(By.ID, "identify-error").text
    )
    assert driver.find_element(By.ID, "identify-error").text == ""
    return [li.get_attribute("data-name") for li in driver.find_elements(By.CSS_SELECTOR, "#names li.face")]


def test_page_names_people_enrolls_and_deletes(browser, server):
    from selenium.webdriver.common.by import By

    probe = SAMPLE / "Tony_Blair" / "Tony_Blair_0009.jpg"
    group = EXAMPLES / "longoria-cooper.jpg"
    want = {
        r["path"]: [f["name"] for f in r["faces"]]
        for r in json.loads(cli("db", "search", str(server.db), str(probe), str(group), "--json")[1])["results"]
    }
    assert want[str(probe)] == ["Tony_Blair"] and want[str(group)] == ["unknown", "unknown"]
    browser.get(server.url + "/")
    wait(browser, lambda d: "81 faces" in d.find_element(By.ID, "status").text)
    assert names_after_upload(browser, probe) == want[str(probe)]
    assert names_after_upload(browser, group) == want[str(group)]
    canvas = browser.find_element(By.ID, "canvas")
    assert int(canvas.get_attribute("width")) > 0  # the photo was drawn, with its boxes

    # enroll without the key: the page shows the server's refusal
    browser.find_element(By.ID, "enroll-name").send_keys("Amy Adams")
    browser.find_element(By.ID, "enroll-photos").send_keys(str(EXAMPLES / "adams.jpg"))
    browser.find_element(By.ID, "enroll").click()
    wait(browser, lambda d: "401" in d.find_element(By.ID, "enroll-result").text)
    browser.find_element(By.ID, "api-key").send_keys(KEY)
    browser.find_element(By.ID, "enroll").click()
    wait(browser, lambda d: "1 face(s) added" in d.find_element(By.ID, "enroll-result").text)
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, 'li.person[data-name="Amy Adams"]'))
    assert names_after_upload(browser, EXAMPLES / "adams.jpg") == ["Amy Adams"]

    # delete from the list (after the confirmation dialog)
    person = browser.find_element(By.CSS_SELECTOR, 'li.person[data-name="Amy Adams"]')
    person.find_element(By.TAG_NAME, "button").click()
    wait(browser, lambda d: d.switch_to.alert).accept()
    wait(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, 'li.person[data-name="Amy Adams"]'))
    assert names_after_upload(browser, EXAMPLES / "adams.jpg") == ["unknown"]


@pytest.fixture(scope="module")
def collection(clustered_db, tmp_path_factory):
    """A server over a copy of the clustered database (one unnamed cluster per person)."""
    s = Server(copy_db(clustered_db[0], tmp_path_factory.mktemp("page-people")))
    yield s
    s.stop()


def cards(driver) -> list[tuple[str, str, int]]:
    """(name or label, named, faces shown) of each card of the People view, in order."""
    rows = driver.execute_script(
        "return [...document.querySelectorAll('#cards .card')].map((c) =>"
        " [c.dataset.name, c.dataset.named, c.querySelectorAll('.thumb').length])"
    )
    return [tuple(r) for r in rows]


def test_people_view_names_removes_and_merges(browser, collection):
    from selenium.webdriver.common.by import By

    api = httpx.Client(base_url=collection.url, timeout=60)
    browser.get(collection.url + "/")
    wait(browser, lambda d: len(cards(d)) == len(CLUSTERED))
    shown = cards(browser)
    assert [n for _, _, n in shown] == sorted(CLUSTERED.values(), reverse=True)  # largest first
    assert all(named == "false" and name.startswith("cluster:") for name, named, _ in shown)
    # every thumbnail loaded: a 96 px crop of its photo
    sizes = "return [...document.querySelectorAll('#cards .thumb img')].map((i) => i.complete && i.naturalWidth)"
    wait(browser, lambda d: d.execute_script(sizes) == [96] * sum(CLUSTERED.values()))

    def card(name: str):
        return browser.find_element(By.CSS_SELECTOR, f'#cards .card[data-name="{name}"]')

    # name the largest cluster: refused without the key, then a person
    largest, smallest = shown[0][0], shown[-1][0]
    card(largest).find_element(By.CLASS_NAME, "name-input").send_keys("Colin Powell")
    card(largest).find_element(By.CLASS_NAME, "name-button").click()
    wait(browser, lambda d: "401" in d.find_element(By.ID, "cards-error").text)
    browser.find_element(By.ID, "api-key").send_keys(KEY)
    card(largest).find_element(By.CLASS_NAME, "name-button").click()
    wait(browser, lambda d: ("Colin Powell", "true", 4) in cards(d))
    assert api.get("/v1/people").json()["people"] == [{"name": "Colin Powell", "photos": 4, "faces": 4}]
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, 'li.person[data-name="Colin Powell"]'))

    # remove a wrong face (x on its thumbnail): it leaves the cluster
    face = card(smallest).find_element(By.CLASS_NAME, "thumb")
    face_id = int(face.get_attribute("data-face"))
    face.find_element(By.CLASS_NAME, "remove").click()
    wait(browser, lambda d: (smallest, "false", 1) in cards(d))
    assert face_id not in [f["id"] for f in api.get(f"/v1/people/{smallest}/faces").json()["faces"]]

    # merge two selected cards: the named one keeps its name
    for name in ("Colin Powell", smallest):
        card(name).find_element(By.CLASS_NAME, "select").click()
    browser.find_element(By.ID, "merge").click()
    wait(browser, lambda d: ("Colin Powell", "true", 5) in cards(d) and len(cards(d)) == len(CLUSTERED) - 1)
    assert api.get("/v1/people").json()["people"] == [{"name": "Colin Powell", "photos": 5, "faces": 5}]
    assert browser.find_element(By.ID, "cards-error").text == ""
    api.close()
