"""The web console in headless Chromium, against a real auth service and a real resource service.

The story: sign in, see the token's claims and countdown, call the resource service, sign in on a second
device, sign the other devices out, watch the second device be refused and told, sign out everywhere, and see
every revocation arrive in the live feed. Screenshots of each page at desktop and phone width are saved.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("playwright", reason="Playwright is not installed: pip install -e '.[browser]'")

from playwright.sync_api import Browser, Page, ViewportSize, expect  # noqa: E402

from tests.browser.conftest import Stack  # noqa: E402
from tests.conftest import PASSWORD  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.integration]

DESKTOP: ViewportSize = {"width": 1280, "height": 900}
PHONE: ViewportSize = {"width": 375, "height": 812}
WAIT_MS = 10_000


class Console:
    """One browser context (one device) on the console page, collecting what must never happen."""

    def __init__(self, browser: Browser, stack: Stack, device: str) -> None:
        agent = f"Mozilla/5.0 (X11; Linux x86_64) Chromium tokenlife-test ({device})"
        self.context = browser.new_context(viewport=DESKTOP, user_agent=agent)
        self.page: Page = self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.problems: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        self.page.goto(stack.console)
        expect(self.page.locator("body[data-ready=true]")).to_be_attached()

    def _console(self, message: object) -> None:
        text = str(getattr(message, "text", ""))
        if "Content Security Policy" in text or getattr(message, "type", "") == "error":
            # Chromium logs every 4xx as a failed load; the refusals (401), a refresh of an ended session
            # (400) and the login backoff (429) are what these tests provoke.
            if not re.search(r"status of (400|401|429) ", text):
                where = getattr(message, "location", {}).get("url", "")
                self.problems.append(f"{text} ({where})")

    def sign_in(self, email: str, password: str = PASSWORD) -> None:
        """Fill the form and submit it with the mouse."""
        self.page.get_by_label("Email").fill(email)
        self.page.get_by_label("Password").fill(password)
        self.page.get_by_role("button", name="Sign in").click()

    def claim(self, name: str) -> str:
        """A claim as the page shows it."""
        return self.page.locator(f"#claims dd[data-claim={name}]").inner_text()

    def call_resource(self) -> None:
        """Press the call button and wait for the answer to show."""
        self.page.locator("#call-result").evaluate("node => { node.textContent = '' }")
        self.page.get_by_role("button", name="Call the resource service").click()
        expect(self.page.locator("#call-result")).to_have_text(re.compile(r"^(200|401|403|503|HTTP)"))

    def feed(self) -> str:
        """The live feed's text."""
        return self.page.locator("#feed-list").inner_text()


def shoot(page: Page, name: str, artifacts: Path) -> None:
    """Full-page screenshots at desktop and phone width; at phone width nothing may overflow sideways."""
    for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(size)
        page.screenshot(path=artifacts / f"console-{name}-{label}.png", full_page=True)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{name} at {label} width overflows by {overflow}px"
    page.set_viewport_size(DESKTOP)


def only_the_refusal_stays(page: Page) -> None:
    """After a sign-out: the refusal shows, and neither the call button nor the last call's answer does."""
    expect(page.locator("#refusal")).to_be_visible()
    expect(page.locator("#call")).to_be_hidden()
    expect(page.locator("#call-result")).to_have_text("")


def says_where_events_appear(page: Page) -> None:
    """The feed's status line sits above the list and says the events are below it, newest at the top."""
    status = page.locator("#feed-status")
    status_box, list_box = status.bounding_box(), page.locator("#feed-list").bounding_box()
    assert status_box is not None
    assert list_box is not None
    assert status_box["y"] + status_box["height"] <= list_box["y"]
    text = status.inner_text()
    assert "below" in text, text
    assert "above" not in text, text
    times = page.locator("#feed-list li time").evaluate_all("nodes => nodes.map(n => n.dateTime)")
    assert times == sorted(times, reverse=True)  # newest at the top


def cards_top_to_bottom(page: Page) -> list[str]:
    """The ids of the visible cards, in the order they appear down the page."""
    boxes = page.locator(".card:visible").evaluate_all(
        "nodes => nodes.map(n => [n.id, n.getBoundingClientRect().top + window.scrollY])"
    )
    return [card for card, _ in sorted(boxes, key=lambda pair: pair[1])]


def test_two_devices_sign_out_others_then_everywhere(
    browser: Browser, stack_factory: Callable[..., Stack], artifacts: Path
) -> None:
    stack = stack_factory()
    user_id = stack.add_user("ada@example.com")

    laptop = Console(browser, stack, "laptop")
    shoot(laptop.page, "signin", artifacts)
    laptop.sign_in("ada@example.com")
    expect(laptop.page.locator("#token")).to_be_visible()
    assert laptop.claim("sub") == user_id
    countdown = laptop.page.locator("#countdown")
    expect(countdown).to_have_text(re.compile(r"^[0-5]:\d\d$"))
    first = countdown.inner_text()
    expect(countdown).not_to_have_text(first)  # it counts down, live
    laptop.call_resource()
    expect(laptop.page.locator("#call-result")).to_contain_text(f"200 OK: accepted. User {user_id}")
    expect(laptop.page.locator("#session-list li")).to_have_count(1)
    expect(laptop.page.locator("#feed-status")).to_contain_text("Connected")
    # The resource service's WebSocket, opened with the token in the subprotocol list, ticks live.
    expect(laptop.page.locator("#socket-status")).to_contain_text("Open")
    expect(laptop.page.locator("#socket-tick")).to_contain_text(re.compile(r"Tick [2-9]"))
    says_where_events_appear(laptop.page)
    feed_box = laptop.page.locator("#feed-list").bounding_box()
    laptop.page.set_viewport_size(PHONE)
    order = cards_top_to_bottom(laptop.page)
    laptop.page.set_viewport_size(DESKTOP)
    assert order[:2] == ["token", "sessions"], f"cards on a phone, top to bottom: {order}"

    phone = Console(browser, stack, "phone")
    phone.sign_in("ada@example.com")
    expect(phone.page.locator("#token")).to_be_visible()
    phone.call_resource()
    expect(phone.page.locator("#call-result")).to_contain_text("200 OK")
    phone_sid = phone.claim("sid")

    # The laptop hears of the phone's sign-in from its feed, and its list follows; the feed does not move.
    expect(laptop.page.locator("#feed-list")).to_contain_text(f"Signed in: new session {phone_sid[:8]}")
    expect(laptop.page.locator("#session-list li")).to_have_count(2)
    expect(laptop.page.locator("#session-list li", has_text="(this device)")).to_have_count(1)
    expect(laptop.page.locator("#session-list")).to_contain_text("tokenlife-test (phone)")
    assert laptop.page.locator("#feed-list").bounding_box() == feed_box

    laptop.page.get_by_role("button", name=f"Timeline of session {laptop.claim('sid')[:8]}").click()
    timeline = laptop.page.locator("#timeline-list")
    expect(timeline).to_contain_text("Signed in: new session")
    expect(timeline).to_contain_text("Access token issued (sign-in)")
    shoot(laptop.page, "signed-in", artifacts)

    laptop.page.get_by_role("button", name="Sign out other devices").click()
    expect(laptop.page.locator("#sessions-status")).to_have_text("Signed out 1 other session.")
    expect(laptop.page.locator("#feed-list")).to_contain_text(
        f"Signed out: session {phone_sid[:8]} (signed out from another device)"
    )
    expect(laptop.page.locator("#session-list li")).to_have_count(1)

    # The phone is told by its own feed, and the resource service refuses its token.
    expect(phone.page.locator("#notice")).to_contain_text("This device was signed out")
    expect(phone.page.locator("#signin")).to_be_visible()
    expect(phone.page.locator("#feed-list")).to_contain_text(f"Signed out: session {phone_sid[:8]}")
    expect(phone.page.locator("#refusal")).to_contain_text("The resource service refused the token")
    expect(phone.page.locator("#socket-status")).to_contain_text(
        'Closed by the resource service: 1008 "token revoked"'
    )
    only_the_refusal_stays(phone.page)
    shoot(phone.page, "signed-out-elsewhere", artifacts)

    laptop.call_resource()
    expect(laptop.page.locator("#call-result")).to_contain_text("200 OK")
    laptop.page.get_by_role("button", name="Sign out everywhere").click()
    expect(laptop.page.locator("#notice")).to_contain_text("You signed out everywhere")
    refusal = laptop.page.locator("#refusal")
    expect(refusal).to_contain_text(re.compile(r"refused the token \d+ ms after the auth service confirmed"))
    delay = int(refusal.get_attribute("data-delay-ms") or "-1")
    assert 0 <= delay < WAIT_MS
    socket = laptop.page.locator("#socket-status")
    expect(socket).to_contain_text(
        re.compile(r'1008 "token revoked", \d+ ms (after|before) the auth service')
    )
    assert socket.get_attribute("data-close-code") == "1008"
    assert abs(int(socket.get_attribute("data-delay-ms") or "")) < WAIT_MS
    only_the_refusal_stays(laptop.page)
    expect(laptop.page.locator("#feed-list")).to_contain_text("Signed out everywhere")
    expect(laptop.page.locator("#feed-status")).to_contain_text("Stopped: signed out")
    says_where_events_appear(laptop.page)
    shoot(laptop.page, "signed-out", artifacts)

    assert laptop.problems == []
    assert phone.problems == []


def test_keyboard_only_sign_in_and_errors_in_words(
    browser: Browser, stack_factory: Callable[..., Stack], artifacts: Path
) -> None:
    stack = stack_factory(TOKENLIFE_LOGIN_MAX_FAILURES="2")
    stack.add_user("kit@example.com")
    stack.add_user("lee@example.com")
    console = Console(browser, stack, "keyboard")
    page = console.page

    def focused() -> str:
        return str(page.evaluate("document.activeElement.id || document.activeElement.className"))

    page.keyboard.press("Tab")
    assert focused() == "skip"
    page.keyboard.press("Tab")
    assert focused() == "email"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none", "the focused control shows no outline"
    page.keyboard.type("kit@example.com")
    page.keyboard.press("Tab")
    assert focused() == "password"
    page.keyboard.type("not the password")
    page.keyboard.press("Enter")
    expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")
    assert focused() == "password"
    shoot(page, "wrong-password", artifacts)

    page.keyboard.press("Control+A")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page.locator("#token")).to_be_visible()
    assert focused() == "token-title"
    expect(page.locator("#who-sub")).to_have_text("kit@example.com")

    # Tab on to the call button and press it: every control is reachable without a mouse.
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Call the resource service":
            break
    else:
        pytest.fail("the call button is not reachable with Tab")
    page.keyboard.press("Enter")
    expect(page.locator("#call-result")).to_contain_text("200 OK")

    # Sign out with the keyboard, then fail another account's password until the backoff answers.
    page.locator("#signout").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#notice")).to_have_text("You signed out of this device.")
    page.get_by_label("Email").fill("lee@example.com")
    alert = page.get_by_role("alert")
    for _ in range(4):
        page.get_by_label("Password").fill("wrong")
        page.keyboard.press("Enter")
        expect(alert).not_to_have_text("")
        if alert.inner_text().startswith("Too many attempts"):
            break
        page.locator("#signin-error").evaluate("node => { node.textContent = '' }")
    expect(alert).to_have_text(re.compile(r"^Too many attempts\. Try again in \d+ (second|minute)s?\.$"))
    assert "{" not in alert.inner_text()
    assert console.problems == []


def test_access_token_is_refreshed_silently_before_expiry(
    browser: Browser, stack_factory: Callable[..., Stack]
) -> None:
    stack = stack_factory(TOKENLIFE_ACCESS_TOKEN_TTL="10")
    stack.add_user("max@example.com")
    console = Console(browser, stack, "refresh")
    console.sign_in("max@example.com")
    expect(console.page.locator("#token")).to_be_visible()
    first = console.claim("jti")
    refreshed = console.page.locator("#refresh-status")
    expect(refreshed).to_contain_text("Refreshed silently", timeout=20_000)
    assert console.claim("jti") != first
    console.call_resource()
    expect(console.page.locator("#call-result")).to_contain_text("200 OK")
    expect(console.page.locator("#feed-list")).to_contain_text("Access token issued (silent refresh)")
    assert console.problems == []
