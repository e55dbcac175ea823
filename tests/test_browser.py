"""The web page in a real browser (Debian's chromium through Selenium) against a real server.

Real data: CIFAR-10 test JPEGs, the USF norms and EfficientNet-Lite0's ImageNet weights (beside
them a small collection of generated images with the tests' tiny models and a hash model, for
what needs one: near-duplicates). Skips with the reason without the data or without chromium and
chromedriver (scripts/browser.sh installs them where it can; CI runs as root, has both, and runs
this test).
IWAN_UPDATE_SCREENSHOT=1 copies the refined page's screenshot to docs/page.png (the README's picture).
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from serving import cifar_collection, cifar_query, running

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REPO = Path(__file__).resolve().parent.parent
SCREENSHOT = REPO / "docs" / "page.png"
KEY = "browser-key"

pytestmark = [pytest.mark.real_data("cifar10-jpg", "usf"), pytest.mark.usefixtures("in_module_home")]


@pytest.fixture(scope="module")
def data(shared_data):
    return shared_data


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        from conftest import REQUIRE_REAL_DATA

        # CI runs as root and installs them (scripts/browser.sh): there the page must be tested.
        missing = "needs Debian's chromium and chromium-driver (bash scripts/browser.sh installs them)"
        if REQUIRE_REAL_DATA:
            pytest.fail(f"IWAN_REQUIRE_REAL_DATA=1 but this test {missing}", pytrace=False)
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(module_database_url, module_home, data, one_torch_thread):
    """The CIFAR-10 collection (words only), and `pics`, generated images with the tiny models and
    a hash model (for near-duplicates); writes allowed with KEY."""
    import livedata

    from iwan.collections.live import LiveCollection, create_collection
    from iwan.config import settings
    from iwan.serve import create_app

    engine = sa.create_engine(module_database_url)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IWAN_HOME", str(module_home))
        collection = cifar_collection(engine, data, "cifar10-test", per_class=30)
        livedata.save_hash_model(module_home)
        create_collection(engine, "pics", livedata.PREDICTOR, hash_model=livedata.HASH_MODEL)  # the real norms stay
        pics = LiveCollection.open(engine, "pics", encoder=livedata.tiny_encoder())
        pics.add_files([(f"warm{i}.png", livedata.png(i)) for i in range(3)], label="warm")
        configured = dataclasses.replace(settings(), api_key=KEY)
        with running(create_app(engine, [collection, pics], settings=configured)) as url:
            yield url
    pics.close()
    collection.close()
    engine.dispose()


def loaded_thumbnails(driver) -> int:
    return driver.execute_script(
        "return [...document.querySelectorAll('#results .result img')]"
        ".filter(i => i.complete && i.naturalWidth > 0).length;"
    )


def result_ids(driver) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll('#results .result')].map(r => r.dataset.imageId);")


def test_search_by_upload_then_by_result_then_by_words(browser, server, data):
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60, poll_frequency=0.1)
    browser.get(server + "/")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#collection option"))
    assert browser.find_element(By.ID, "method").get_attribute("value") == "iwan"

    # an image the collection does not hold, uploaded through the file chooser
    browser.find_element(By.ID, "image-file").send_keys(str(cifar_query(data, "cat")))
    wait.until(lambda d: loaded_thumbnails(d) >= 10)
    first = result_ids(browser)
    assert len(first) == 20
    assert "image" in browser.find_element(By.ID, "status").text
    assert browser.find_element(By.ID, "query-words").text.startswith("query words:")
    assert " ms" in browser.find_element(By.ID, "timing").text

    # "more" pages on with offset
    browser.find_element(By.ID, "more").click()
    wait.until(lambda d: len(result_ids(d)) == 40)
    assert result_ids(browser)[:20] == first and not set(result_ids(browser)[20:]) & set(first)

    # a click on a result's picture searches by it
    clicked = first[0]
    browser.find_elements(By.CSS_SELECTOR, "#results .result .thumb")[0].click()
    wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("20 results for image " + clicked))
    wait.until(lambda d: loaded_thumbnails(d) >= 10)
    second = result_ids(browser)
    assert second != first and clicked not in second

    # words: every result says why, by the path of words from the query
    words = browser.find_element(By.ID, "words")
    words.clear()
    words.send_keys("cat")
    browser.find_element(By.ID, "search-words").click()
    wait.until(lambda d: "cat" in d.find_element(By.ID, "status").text and loaded_thumbnails(d) >= 10)
    whys = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#results .result .why")]
    assert len(whys) == 20 and all(w.startswith("why: cat") and "→" in w for w in whys), whys[:3]
    labels = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#results .result .label")]
    animals = {"bird", "cat", "deer", "dog", "frog", "horse"}
    assert "cat" in labels and sum(label in animals for label in labels) >= 15, labels  # CAT leads to animals

    # nothing came from anywhere but the server
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name);")
    assert resources and all(r.startswith(server) for r in resources), resources


def marks(driver) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#mark-list li span")]


def mark(driver, image_id: str, like: bool, by_keyboard: bool = False) -> None:
    which = ".mark-like" if like else ".mark-unlike"
    button = driver.find_element(By.CSS_SELECTOR, f'#results .result[data-image-id="{image_id}"] {which}')
    if by_keyboard:
        button.send_keys(Keys.SPACE)  # focused, then pressed as a keyboard user would
    else:
        button.click()


def pressed(driver, image_id: str) -> tuple[str, str]:
    card = driver.find_element(By.CSS_SELECTOR, f'#results .result[data-image-id="{image_id}"]')
    return tuple(card.find_element(By.CSS_SELECTOR, b).get_attribute("aria-pressed") for b in (".mark-like", ".mark-unlike"))


def search_words(driver, wait, text: str) -> list[str]:
    words = driver.find_element(By.ID, "words")
    words.clear()
    words.send_keys(text)
    driver.find_element(By.ID, "search-words").click()
    wait.until(lambda d: d.find_element(By.ID, "status").text.startswith(f"20 results for words “{text}”")
               and loaded_thumbnails(d) >= 10)
    return result_ids(driver)


def test_mark_results_more_and_less_like_then_refine(browser, server, data, tmp_path):
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 60, poll_frequency=0.1)
    browser.get(server + "/")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#label-choices select"))
    first = search_words(browser, wait, "cat")
    assert not browser.find_element(By.ID, "marks").is_displayed()
    assert browser.find_elements(By.CSS_SELECTOR, "#results .result .example") == []  # one example: nothing to name

    labels = labels_of(browser)
    liked = next(i for i in first[1:] if labels[i] == "cat")  # more cats, fewer dogs
    unliked = next(i for i in first if labels[i] == "dog")
    dropped = next(i for i in first if i not in (liked, unliked))
    mark(browser, liked, like=True)
    mark(browser, unliked, like=False)
    mark(browser, dropped, like=True, by_keyboard=True)
    assert pressed(browser, liked) == ("true", "false") and pressed(browser, unliked) == ("false", "true")
    assert marks(browser) == [f"more like image {liked} ({labels[liked]})", f"less like image {unliked} ({labels[unliked]})",
                              f"more like image {dropped} ({labels[dropped]})"]
    mark(browser, dropped, like=True)  # a second press takes the mark away
    assert pressed(browser, dropped) == ("false", "false") and len(marks(browser)) == 2
    mark(browser, dropped, like=False)
    browser.find_element(By.CSS_SELECTOR, f'#mark-list li[data-image-id="{dropped}"] button').click()  # removed from the bar
    assert pressed(browser, dropped) == ("false", "false") and len(marks(browser)) == 2
    assert "marked-like" in browser.find_element(By.CSS_SELECTOR, f'.result[data-image-id="{liked}"]').get_attribute("class")

    browser.find_element(By.ID, "refine").click()
    wait.until(lambda d: "refined by 1 more-like and 1 less-like marks" in d.find_element(By.ID, "status").text
               and loaded_thumbnails(d) >= 10)
    refined = result_ids(browser)
    assert len(refined) == 20 and refined != first and liked not in refined and unliked not in refined
    whys = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#results .result .why")]
    assert len(whys) == 20 and all(w.startswith("why: ") and "→" in w for w in whys), whys[:3]
    assert any("pushed down " in w and f" by image {unliked} (dog): " in w for w in whys), whys[:3]
    examples = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#results .result .example")]
    assert len(examples) == 20, examples
    assert set(examples) <= {"from words “cat”", f"from image {liked} ({labels[liked]})"}, examples
    assert marks(browser) and browser.find_element(By.ID, "marks").is_displayed()  # the marks stay for the next refine
    browser.execute_script("window.scrollTo(0, 0);")
    assert browser.save_screenshot(str(tmp_path / "page.png"))
    if os.environ.get("IWAN_UPDATE_SCREENSHOT"):  # the README's picture: docs/page.png
        shutil.copyfile(tmp_path / "page.png", SCREENSHOT)

    # an uploaded image is sent again (its bytes kept) with the marks: a multipart search
    browser.find_element(By.ID, "clear-marks").click()
    browser.find_element(By.ID, "image-file").send_keys(str(cifar_query(data, "ship", 998)))
    wait.until(lambda d: "image 0998.jpg by" in d.find_element(By.ID, "status").text and loaded_thumbnails(d) >= 10)
    uploaded = result_ids(browser)
    marked = f"from image {uploaded[2]} ({labels_of(browser)[uploaded[2]]})"
    mark(browser, uploaded[2], like=True)
    browser.find_element(By.ID, "refine").click()
    wait.until(lambda d: "image 0998.jpg, refined by 1 more-like mark" in d.find_element(By.ID, "status").text
               and loaded_thumbnails(d) >= 10)
    assert result_ids(browser) != uploaded and uploaded[2] not in result_ids(browser)
    examples = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#results .result .example")]
    assert len(examples) == 20 and set(examples) <= {"from image 0998.jpg", marked}, examples

    # label filters and the cut-off search the search shown again (here multipart: the upload and a mark)
    browser.find_element(By.CSS_SELECTOR, "#filters summary").click()
    browser.execute_script("document.querySelector('#results .result').dataset.shownBefore = 'yes';")
    Select(browser.find_element(By.CSS_SELECTOR, '#label-choices select[data-label="ship"]')).select_by_visible_text("only")
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "[data-shown-before]") and loaded_thumbnails(d) >= 10)
    assert browser.find_element(By.ID, "filter-summary").text == "only ship"
    assert "image 0998.jpg, refined by 1 more-like mark" in browser.find_element(By.ID, "status").text
    assert len(result_ids(browser)) == 20 and set(labels_of(browser).values()) == {"ship"}
    ships = result_ids(browser)
    scores = [float(e.text.split("score ")[1].split(" ")[0]) for e in browser.find_elements(By.CSS_SELECTOR, "#results .meta")]
    cut = f"{scores[4] - 0.0006:.4f}"  # below the fifth score, shown rounded to 3 places
    browser.find_element(By.ID, "min-score").send_keys(cut, Keys.ENTER)
    wait.until(lambda d: "met the minimum score" in d.find_element(By.ID, "status").text)
    kept = result_ids(browser)
    assert 5 <= len(kept) < 20 and kept == ships[:len(kept)], (kept, ships)
    assert f"({len(kept)} on this page met the minimum score)" in browser.find_element(By.ID, "status").text
    assert browser.find_element(By.ID, "filter-summary").text == f"only ship · score ≥ {float(cut):g}"


def labels_of(driver) -> dict[str, str]:
    return driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#results .result')]"
        ".map(r => [r.dataset.imageId, r.querySelector('.label').textContent]));")


def test_docs_page_loads_without_any_other_site(browser, server):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/docs")
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock"))
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "/v1/collections/{name}/search" in text
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name);")
    assert all(r.startswith(server) for r in resources), resources


def test_the_add_form_appears_with_a_key_and_names_near_duplicates(browser, server, tmp_path):
    import livedata
    import numpy as np
    from PIL import Image
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 60, poll_frequency=0.1)
    browser.get(server + "/")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#label-choices select"))
    assert not browser.find_element(By.ID, "collapse-row").is_displayed()  # cifar10-test has no hash model
    cifar = search_words(browser, wait, "cat")
    mark(browser, cifar[0], like=True)
    assert browser.find_element(By.ID, "marks").is_displayed()
    Select(browser.find_element(By.ID, "collection")).select_by_visible_text("pics")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#label-choices select[data-label="warm"]'))
    # the words are searched again in pics; the marks (images of cifar10-test) are gone
    wait.until(lambda d: re.match(r"([1-3] results|No result) for words “cat”", d.find_element(By.ID, "status").text))
    assert set(labels_of(browser).values()) <= {"warm"} and not set(result_ids(browser)) & set(cifar)
    assert not browser.find_element(By.ID, "marks").is_displayed() and marks(browser) == []
    browser.find_element(By.CSS_SELECTOR, "#filters summary").click()
    assert browser.find_element(By.ID, "collapse-row").is_displayed()
    form = browser.find_element(By.ID, "add-form")
    assert not form.is_displayed()
    browser.find_element(By.CSS_SELECTOR, "#admin summary").click()
    browser.find_element(By.ID, "api-key").send_keys(KEY)
    assert form.is_displayed()

    pixels = np.array(Image.open(io.BytesIO(livedata.png(1))))
    pixels[0, 0] ^= 1  # one bit of one pixel: other bytes, the same picture
    Image.fromarray(pixels).save(tmp_path / "again.png")
    (tmp_path / "other.png").write_bytes(livedata.png(77))
    browser.find_element(By.ID, "add-files").send_keys(f"{tmp_path / 'again.png'}\n{tmp_path / 'other.png'}")
    browser.find_element(By.ID, "add-label").send_keys("warm")
    browser.find_element(By.CSS_SELECTOR, "#add-form button[type=submit]").click()
    wait.until(lambda d: d.find_element(By.ID, "add-status").text.startswith("Added 2"))
    status = browser.find_element(By.ID, "add-status").text
    assert "; near-duplicates: again.png (image " in status and "is nearly the same as image" in status, status
    assert "other.png" not in status, status
    wait.until(lambda d: "warm (5)" in d.find_element(By.ID, "label-choices").text)  # the labels are counted again
