"""Seeded simulators of IoT sensor readings and web user activity.

Both advance an event clock: `clock()` returns the event time of the next event, the wall clock for live
producing, or a simulated clock for generating historical days. Given a seed and a simulated clock, the
event sequence is reproducible.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from lambdaflow.contracts import format_ts

Clock = Callable[[], datetime]

# location -> (mean °C, daily amplitude °C, chance per reading that a hot spell starts). Hot spells, a sensor
# next to a heater and draining batteries are the exceptions that alert: ~5 % of readings, and some within the
# first seconds of any run.
LOCATIONS: dict[str, tuple[float, float, float]] = {
    "warehouse-a": (18.0, 4.0, 0.0001),
    "greenhouse": (24.0, 4.0, 0.002),
    "server-room": (24.0, 1.5, 0.0003),
    "office-1": (21.0, 2.0, 0.00005),
    "cold-storage": (4.0, 1.0, 0.0),
    "rooftop": (12.0, 8.0, 0.0002),
}
BATTERY_REPLACED_AT = 15.0  # % : a low-battery alert gets the battery replaced soon after
PAGES = ("/", "/search", "/products", "/products/item", "/cart", "/checkout", "/account", "/help")
BROWSERS = ("Chrome", "Firefox", "Safari", "Edge", " chrome ", "SAFARI")  # some messy casing, as in real logs


def event_id(rng: random.Random) -> str:
    """A random (version 4) UUID from the seeded generator; the same as `uuid.UUID(int=…, version=4)`."""
    digits = f"{rng.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET:032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def simulated_clock(start: datetime, events_per_second: float) -> Clock:
    """A clock that advances `1 / events_per_second` per event from `start`."""
    step = timedelta(seconds=1 / events_per_second)
    state = {"next": start - step}

    def tick() -> datetime:
        state["next"] += step
        return state["next"]

    return tick


def wall_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Sensor:
    sensor_id: str
    location: str
    battery: float
    drain_per_reading: float
    pressure: float
    hot_spell_left: int = 0
    next_to_heater: bool = False


@dataclass
class IotSimulator:
    """Sensors spread over locations: daily temperature cycles, hot spells above 30 °C, draining batteries."""

    seed: int = 42
    sensors: int = 50
    rng: random.Random = field(init=False)
    _fleet: list[_Sensor] = field(init=False)
    _next: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        names = list(LOCATIONS)
        self._fleet = [
            _Sensor(
                sensor_id=f"sensor-{number:04d}",
                location=names[number % len(names)],
                battery=self.rng.uniform(25, 100),
                # a few sensors drain fast enough to cross 20 % within a demo
                drain_per_reading=self.rng.choice([0.001, 0.002, 0.005, 0.05]),
                pressure=self.rng.gauss(1013, 5),
            )
            for number in range(self.sensors)
        ]
        self._fleet[0].next_to_heater = True  # always above 30 °C
        if len(self._fleet) > 1:  # nearly flat, and draining fast: under 20 % within ~40 readings
            self._fleet[1].battery, self._fleet[1].drain_per_reading = 22.0, 0.05

    def key(self, event: dict) -> bytes:
        return event["sensor_id"].encode()

    def events(self, clock: Clock) -> Iterator[dict]:
        rng, fleet = self.rng, self._fleet
        daily_cycle: dict[tuple[str, int], float] = {}  # (location, minute of day) -> mean °C
        while True:
            sensor = fleet[self._next]
            self._next = (self._next + 1) % len(fleet)
            ts = clock()
            mean, amplitude, hot_chance = LOCATIONS[sensor.location]
            minute = ts.hour * 60 + ts.minute
            cycle = daily_cycle.get((sensor.location, minute))
            if cycle is None:  # warmest at 15:00 UTC, coldest at 03:00
                cycle = mean + amplitude * math.sin((minute / 60 - 9) / 24 * 2 * math.pi)
                daily_cycle[sensor.location, minute] = cycle
            temperature = cycle + rng.gauss(0, 0.4)
            if sensor.hot_spell_left == 0 and rng.random() < hot_chance:
                sensor.hot_spell_left = rng.randint(20, 200)
            if sensor.hot_spell_left or sensor.next_to_heater:
                sensor.hot_spell_left = max(0, sensor.hot_spell_left - 1)
                temperature = max(temperature, 30.5 + rng.uniform(0, 6))
            sensor.battery -= sensor.drain_per_reading
            if sensor.battery <= BATTERY_REPLACED_AT:
                sensor.battery = 100.0  # replaced
            sensor.pressure += (rng.random() - 0.5) * 0.7 + (1013 - sensor.pressure) * 0.01
            humidity = min(100.0, max(0.0, 70 - (temperature - mean) * 2.5 + (rng.random() - 0.5) * 10))
            yield {
                "event_id": event_id(rng),
                "sensor_id": sensor.sensor_id,
                "location": sensor.location,
                "ts": format_ts(ts),
                "temperature": round(min(100.0, max(-50.0, temperature)), 2),
                "humidity": round(humidity, 2),
                "pressure": round(sensor.pressure, 2),
                "battery": round(sensor.battery, 2),
            }


@dataclass
class _Session:
    session_id: str
    user_id: str
    browser: str
    steps_left: int
    in_cart: int = 0
    started: bool = False


@dataclass
class ActivitySimulator:
    """Concurrent user sessions: login, page views, carts, purchases, logout.

    Each session waits an exponential think time (mean `think_s`) between its events and has a varied
    number of steps, so session lengths range from seconds to well over 5 minutes. `concurrency` sessions
    are active at once; with the event rate r, think_s ≈ concurrency / r keeps the clock and the sessions'
    own timelines in step.
    """

    seed: int = 42
    users: int = 2000
    concurrency: int = 200
    think_s: float = 20.0
    rng: random.Random = field(init=False)
    # a heap of (due time, sequence, session): tuples compare in C, far cheaper than dataclass ordering
    _active: list[tuple[datetime, int, _Session]] = field(init=False, default_factory=list)
    _sequence: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def _schedule(self, due: datetime, session: _Session) -> None:
        self._sequence += 1
        heapq.heappush(self._active, (due, self._sequence, session))

    def key(self, event: dict) -> bytes:
        return event["session_id"].encode()

    def _new_session(self, now: datetime) -> None:
        rng = self.rng
        due = now + timedelta(seconds=rng.uniform(0, self.think_s))
        session = _Session(
            session_id=event_id(rng),
            user_id=f"user-{rng.randrange(self.users):05d}",
            browser=rng.choice(BROWSERS),
            steps_left=max(1, int(rng.lognormvariate(2.0, 0.8))),  # median ~7 steps, long tail
        )
        self._schedule(due, session)

    def events(self, clock: Clock) -> Iterator[dict]:
        rng = self.rng
        while True:
            ts = clock()
            while len(self._active) < self.concurrency:
                self._new_session(ts)
            session = heapq.heappop(self._active)[2]
            amount = None
            if not session.started:
                event_type, page, session.started = "login", "/account", True
            elif session.steps_left <= 0:
                event_type, page = "logout", "/account"
            else:
                session.steps_left -= 1
                roll = rng.random()
                if session.in_cart and roll < 0.25:
                    event_type, page = "purchase", "/checkout"
                    amount = round(sum(rng.uniform(5, 120) for _ in range(session.in_cart)), 2)
                    session.in_cart = 0
                elif roll < 0.35:
                    event_type, page = "add_to_cart", "/products/item"
                    session.in_cart += 1
                else:
                    event_type, page = "page_view", rng.choice(PAGES)
            event = {
                "event_id": event_id(rng),
                "user_id": session.user_id,
                "session_id": session.session_id,
                "ts": format_ts(ts),
                "event_type": event_type,
                "page": page,
                "browser": session.browser,
            }
            if amount is not None:
                event["amount"] = amount
            yield event
            if event_type != "logout":
                self._schedule(ts + timedelta(seconds=rng.expovariate(1 / self.think_s)), session)
