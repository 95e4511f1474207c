"""A capacity model for a farm on Azure Service Bus: prints the table of docs/scaling.md.

    python -m bench.capacity [--envelope-us 1300] [--key-us 30] [--max-pack 100]

Every instance has its own subscription on one topic, so every envelope one instance sends is
delivered to the N-1 others. Per envelope, Service Bus bills one operation for the send and
two per delivery (a peek-lock receive and its completion), and the Standard tier's throttling
charges one credit for the send, one per subscription filter evaluated (N: each subscription
has one rule) and one per delivery. Presence heartbeats (one per instance every
`heartbeat_interval` seconds) are envelopes too. docs/scaling.md cites each limit; the CPU
figures come from bench/scale.py.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

STANDARD_CREDITS_PER_SECOND = 1_000
"""Standard tier: 1,000 credits per second per namespace (service-bus-throttling)."""
SUBSCRIPTIONS_PER_TOPIC = 2_000
"""Every tier (service-bus-quotas); the own-message SQL rule also meets 2,000 SQL filters."""
STANDARD_INCLUDED_OPERATIONS = 13_000_000
"""Standard: the first 13 M operations a month are in the base charge (pricing page)."""
SECONDS_PER_MONTH = 30 * 86_400
"""A 30-day month (our assumption)."""
HEARTBEAT_INTERVAL = 30.0
"""`EventBrokerOptions.heartbeat_interval`'s default (README, configuration table)."""


def steady_pack(per_sender_rate: float, window: float, max_pack: int) -> float:
    """Notifications per envelope when each sender's notifications arrive evenly: an envelope
    takes the first one and those within `window` after it (at most `max_pack`)."""
    return min(1.0 + per_sender_rate * window, float(max_pack))


@dataclass(frozen=True)
class Farm:
    instances: int
    notifications_per_second: float
    """Sent by the whole farm (each one received by every other instance)."""
    pack: float = 1.0
    """Notifications per envelope (1: unpacked, one envelope per notification)."""
    heartbeat_interval: float = HEARTBEAT_INTERVAL

    @property
    def envelopes_per_second(self) -> float:
        heartbeats = self.instances / self.heartbeat_interval if self.heartbeat_interval else 0.0
        return self.notifications_per_second / self.pack + heartbeats

    @property
    def deliveries_per_second(self) -> float:
        return self.envelopes_per_second * (self.instances - 1)

    @property
    def billed_operations_per_second(self) -> float:
        """One per send; a receive and a complete per delivery."""
        return self.envelopes_per_second * (1 + 2 * (self.instances - 1))

    @property
    def standard_credits_per_second(self) -> float:
        """One per send, one per filter evaluation (every subscription), one per delivery."""
        return self.envelopes_per_second * (1 + self.instances + (self.instances - 1))

    @property
    def monthly_operations(self) -> float:
        return self.billed_operations_per_second * SECONDS_PER_MONTH

    def instance_cores(self, envelope_us: float, key_us: float) -> float:
        """CPU cores each instance spends receiving: `envelope_us` per envelope (its first
        notification included), `key_us` per further notification packed in it."""
        share = (self.instances - 1) / self.instances  # all but its own
        envelopes = self.envelopes_per_second * share
        extra_keys = self.notifications_per_second * share * (1 - 1 / self.pack)
        return (envelopes * envelope_us + extra_keys * key_us) / 1e6

    def verdict(self, envelope_us: float, key_us: float) -> str:
        if self.instances > SUBSCRIPTIONS_PER_TOPIC:
            return "beyond one topic (2,000 subscriptions): split the farm"
        notes = []
        if self.standard_credits_per_second <= STANDARD_CREDITS_PER_SECOND:
            notes.append("Standard")
        else:
            notes.append(f"Premium ({_short(self.deliveries_per_second)} deliveries/s)")
        cores = self.instance_cores(envelope_us, key_us)
        if cores >= 1:
            notes.append(f"instances CPU-bound ({cores:.1f} cores each)")
        return "; ".join(notes)


def _short(value: float) -> str:
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def _cores(cores: float) -> str:
    return f"{cores:.1f} cores" if cores >= 1 else f"{cores * 100:.2g}% of a core"


def table(
    sizes: list[int], rates: list[float], envelope_us: float, key_us: float, max_pack: int
) -> list[str]:
    """Markdown rows: each farm size x rate, unpacked and fully packed (job bursts)."""
    lines = [
        "| instances | notifications/s | per envelope | envelopes/s | deliveries/s "
        "| Standard credits/s (limit 1,000) | billed operations/month | CPU per instance "
        "| needs |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for n in sizes:
        for rate in rates:
            for pack in (1, max_pack):
                farm = Farm(n, rate, pack)
                cores = farm.instance_cores(envelope_us, key_us)
                lines.append(
                    f"| {n:,} | {rate:,.0f} | {pack} | {_short(farm.envelopes_per_second)} "
                    f"| {_short(farm.deliveries_per_second)} "
                    f"| {_short(farm.standard_credits_per_second)} "
                    f"| {_short(farm.monthly_operations)} | {_cores(cores)} "
                    f"| {farm.verdict(envelope_us, key_us)} |"
                )
    return lines


def largest_standard_farm(rate: float, pack: float = 1.0) -> int:
    """The most instances one Standard namespace carries at `rate` (0 if none)."""
    best = 0
    for n in range(2, SUBSCRIPTIONS_PER_TOPIC + 1):
        if Farm(n, rate, pack).standard_credits_per_second > STANDARD_CREDITS_PER_SECOND:
            break
        best = n
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--envelope-us",
        type=float,
        default=1300.0,
        help="CPU per received envelope over Service Bus (bench/scale.py: servicebus net)",
    )
    parser.add_argument(
        "--key-us",
        type=float,
        default=30.0,
        help="CPU per further notification in a packed envelope (bench/scale.py: packed bursts)",
    )
    parser.add_argument("--max-pack", type=int, default=100, help="coalesce_max_messages")
    parser.add_argument("--sizes", default="10,100,500,2000")
    parser.add_argument("--rates", default="10,100,1000,10000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rates = [float(r) for r in args.rates.split(",")]
    for line in table(sizes, rates, args.envelope_us, args.key_us, args.max_pack):
        print(line)
    print()
    print("largest farm one Standard namespace carries (heartbeats every 30 s included):")
    for rate in rates:
        print(
            f"  {rate:8,.0f} notifications/s: unpacked {largest_standard_farm(rate):5}, "
            f"packed {args.max_pack}: {largest_standard_farm(rate, args.max_pack):5}"
        )
    quiet = largest_standard_farm(0.0)
    print(f"  heartbeats alone: {quiet} instances")
    print(
        f"steady sets (each sender alone in a 2 ms window): pack = 1 + rate x window, e.g. "
        f"100/s per instance -> {steady_pack(100, 0.002, args.max_pack):.1f} per envelope"
    )
    print(
        f"Standard includes {STANDARD_INCLUDED_OPERATIONS / 1e6:.0f} M operations a month; "
        f"a month is {SECONDS_PER_MONTH:,} s here; Premium needs as many messaging units as "
        "its CPU metric asks for (no published per-unit rate): start with 1-2, scale up above "
        "70% CPU"
    )


if __name__ == "__main__":
    main()
