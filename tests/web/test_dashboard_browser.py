"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright against an OMA whose appliance
is scripted message by message, so the page is checked at each moment of the run — never against a timer:
a replication's bars move to 100 %, a failover's steps complete, a failed job shows its error, the job log opens,
and the page says when its live stream is cut and picks it up again (the watch resumes from Last-Event-ID).

Screenshots go to the test's temp dir; with OMA_UPDATE_SCREENSHOTS=1 also to docs/screenshots (the README's).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from playwright.async_api import Locator, Page, async_playwright, expect

from oma.common.v1 import jobs_pb2
from oma.v1 import (
    access_pb2,
    access_pb2_grpc,
    failover_pb2,
    replication_pb2,
    replication_pb2_grpc,
    vm_context_pb2,
    vm_context_pb2_grpc,
)
from oma_server.app import App
from oma_server.server import OmaServer
from tests.clients import oma_channel
from tests.conftest import REPO
from tests.factories import RawStream, enroll, inventory
from tests.failover.helpers import TEST, failover_stub, map_network, sim_of, start_oma
from vma.v1 import stream_pb2

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
# What Chromium needs on a machine with no network but loopback (no background connections, no GPU, root).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = REPO / "docs" / "screenshots"
WAIT_MS = 30_000


@pytest.fixture
def chromium() -> Path:
    assert CHROMIUM.exists(), "Debian's chromium is not installed: run `make tools`"
    return CHROMIUM


@pytest.fixture
async def page(chromium: Path) -> AsyncIterator[Page]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_FLAGS)
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        yield await context.new_page()
        await browser.close()


async def screenshot(page: Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    await page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000, "a screenshot of a rendered page"
    if os.environ.get("OMA_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SCREENSHOTS / name)


class Appliance:
    """A scripted appliance on the real stream: each message sent when the test says, each ack awaited."""

    def __init__(self, stream: RawStream) -> None:
        self.stream = stream

    async def next_start(self) -> stream_pb2.StartReplicationCommand:
        while True:
            command = (await self.stream.recv_until("command", timeout=30)).command
            if command.WhichOneof("kind") == "start_replication":
                return command.start_replication

    async def send(self, job_id: str, **message: object) -> None:
        kind, body = next(iter(message.items()))
        sequence = body.sequence  # type: ignore[attr-defined]
        await self.stream.send(**{kind: body})
        await self.stream.recv_until("ack", timeout=20, job_id=job_id, sequence=sequence)

    async def report(self, start: stream_pb2.StartReplicationCommand, sequence: int, fraction: float) -> None:
        total = sum(d.capacity_bytes for d in start.disks)
        phase = jobs_pb2.COPY_PHASE_DONE if fraction >= 1 else jobs_pb2.COPY_PHASE_COPYING
        await self.send(
            start.job_id,
            progress=stream_pb2.ProgressReport(
                job_id=start.job_id,
                sequence=sequence,
                phase=phase,
                current_operation=f"copying disks ({fraction:.0%})",
                bytes_done=int(total * fraction),
                bytes_total=total,
                throughput_bytes_per_second=48 << 20,
                eta={"seconds": int(30 * (1 - fraction))},  # type: ignore[arg-type]
                disks=[
                    stream_pb2.DiskProgress(
                        disk_id=d.disk_id,
                        bytes_done=int(d.capacity_bytes * fraction),
                        bytes_total=d.capacity_bytes,
                        throughput_bytes_per_second=24 << 20,
                        phase=phase,
                        mode=jobs_pb2.COPY_MODE_FULL,
                    )
                    for d in start.disks
                ],
            ),
        )


async def register_and_start(channel: grpc.aio.Channel, appliance_id: str, name: str) -> str:
    vm = await vm_context_pb2_grpc.VmContextServiceStub(channel).RegisterVmContext(
        vm_context_pb2.RegisterVmContextRequest(
            appliance_id=appliance_id, virtual_machine=inventory(disk_mib=(8, 4), name=name)
        )
    )
    await replication_pb2_grpc.ReplicationServiceStub(channel).StartReplication(
        replication_pb2.StartReplicationRequest(vm_context_id=vm.vm_context.id)
    )
    return vm.vm_context.id


def job_card(page: Page, job_id: str) -> Locator:
    return page.locator(f'article.job[data-job-id="{job_id}"]')


async def test_dashboard_follows_a_replication_a_failover_and_an_error(page: Page, tmp_path: Path) -> None:
    server: OmaServer = await start_oma(tmp_path, http_listen="127.0.0.1:0", http_reauth_interval_s=0.5)
    try:
        async with oma_channel(server) as channel:
            assert server.http is not None
            base = f"http://127.0.0.1:{server.http.port}"
            enrolled = await enroll(channel, "vma-dashboard")
            stream = RawStream(channel)
            await stream.hello(enrolled)
            appliance = Appliance(stream)
            vm_id = await register_and_start(channel, enrolled.appliance_id, "web-dashboard")
            start = await appliance.next_start()
            job_id = start.job_id

            # Without a session the page sends to the login; a viewer's token logs in (kept in a cookie).
            viewer = await access_pb2_grpc.AccessServiceStub(channel).CreateApiToken(
                access_pb2.CreateApiTokenRequest(name="dashboard-viewer", role=access_pb2.ROLE_VIEWER)
            )
            await page.goto(base)
            await expect(page).to_have_url(f"{base}/login")
            await page.fill("#token", "oma_0123456789abcdef_" + "x" * 43)
            await page.click("#login")
            await expect(page.locator("#login-problem")).to_contain_text("not valid")
            await screenshot(page, tmp_path, "dashboard-login.png")
            await page.fill("#token", viewer.secret)
            await page.click("#login")
            await expect(page).to_have_url(f"{base}/")
            await expect(page.locator("#live")).to_have_attribute("data-live", "live", timeout=WAIT_MS)
            row = page.locator(f'tr[data-appliance-id="{enrolled.appliance_id}"]')
            await expect(row.locator('[data-state="connected"]')).to_be_visible(timeout=WAIT_MS)
            card = job_card(page, job_id)
            await expect(card.locator(".badge.status")).to_have_attribute("data-status", "waiting_for_vma")

            # The bars move with each report the appliance sends.
            sequence = start.last_applied_sequence + 1
            await appliance.send(job_id, event=stream_pb2.JobEvent(job_id=job_id, sequence=sequence,
                                                                    started=stream_pb2.JobStarted()))  # fmt: skip
            for percent in (25, 60):
                sequence += 1
                await appliance.report(start, sequence, percent / 100)
                await expect(card.locator(".job-bar .bar")).to_have_attribute("data-percent", str(percent),
                                                                               timeout=WAIT_MS)  # fmt: skip
                disk_bars = card.locator(".disk .bar")
                await expect(disk_bars).to_have_count(2)
                for i in range(2):
                    await expect(disk_bars.nth(i)).to_have_attribute("data-percent", str(percent))
            await expect(card.locator(".badge.status")).to_have_attribute("data-status", "replicating")
            await expect(card).to_contain_text("48.0 MiB/s")
            await expect(card).to_contain_text("ETA")
            await screenshot(page, tmp_path, "dashboard-replicating.png")

            for disk in start.disks:
                sequence += 1
                done = stream_pb2.DiskCompleted(disk_id=disk.disk_id, change_id=f"cid-{disk.disk_id}")
                await appliance.send(job_id, event=stream_pb2.JobEvent(job_id=job_id, sequence=sequence,
                                                                        disk_completed=done))  # fmt: skip
            sequence += 1
            await appliance.report(start, sequence, 1.0)
            sequence += 1
            await appliance.send(job_id, event=stream_pb2.JobEvent(job_id=job_id, sequence=sequence,
                                                                    completed=stream_pb2.JobCompleted()))  # fmt: skip
            await expect(card.locator(".badge.status")).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
            await expect(card.locator(".job-bar .bar")).to_have_attribute("data-percent", "100")
            for i in range(2):
                await expect(card.locator(".disk .bar").nth(i)).to_have_attribute("data-percent", "100")
            vm_row = page.locator(f'tr[data-vm-id="{vm_id}"]')
            await expect(vm_row).to_contain_text("ready_for_failover", timeout=WAIT_MS)
            await expect(vm_row.locator(".rpo")).to_contain_text("ago")

            # The job log opens from the card.
            await card.locator("button.log").click()
            await expect(card.locator(".joblog")).to_contain_text("create_volume", timeout=WAIT_MS)

            # A test failover: its steps appear and complete one by one.
            await map_network(channel, sim_of(server), vm_id)
            failover = await failover_stub(channel).StartFailover(
                failover_pb2.StartFailoverRequest(vm_context_id=vm_id, kind=TEST)
            )
            failover_card = job_card(page, failover.job.id)
            await expect(failover_card.locator(".badge.status")).to_have_attribute("data-status", "completed",
                                                                                    timeout=60_000)  # fmt: skip
            steps = failover_card.locator(".steps li")
            assert await steps.count() >= 5
            for i in range(await steps.count()):
                assert await steps.nth(i).get_attribute("data-status") in ("completed", "skipped")
            await expect(failover_card.locator('[data-step="deploy_vm"]')).to_have_attribute("data-status", "completed")
            await screenshot(page, tmp_path, "dashboard-failover.png")

            # A job the appliance fails shows its error.
            other_vm = await register_and_start(channel, enrolled.appliance_id, "db-dashboard")
            failing = await appliance.next_start()
            detail = "cannot write to the NBD export: connection refused by 127.0.0.1"
            await appliance.send(failing.job_id, event=stream_pb2.JobEvent(
                job_id=failing.job_id, sequence=failing.last_applied_sequence + 1,
                failed=stream_pb2.JobFailed(error_class=jobs_pb2.ERROR_CLASS_TARGET_UNREACHABLE, detail=detail),
            ))  # fmt: skip
            failed_card = job_card(page, failing.job_id)
            await expect(failed_card.locator(".badge.status")).to_have_attribute("data-status", "failed",
                                                                                  timeout=WAIT_MS)  # fmt: skip
            await expect(failed_card.locator(".error")).to_contain_text(detail)
            await expect(page.locator(f'tr[data-vm-id="{other_vm}"]')).to_contain_text("db-dashboard", timeout=WAIT_MS)
            await screenshot(page, tmp_path, "dashboard-error.png")
            await stream.close()

        # The OMA goes away: the page says so; it comes back on the same ports and the page resumes its watch.
        http_port = server.http.port
        settings = server.app.settings
        await server.stop(grace=0.2)
        await expect(page.locator("#live")).to_have_attribute("data-live", "down", timeout=WAIT_MS)
        await expect(page.locator("#problem")).to_contain_text("interrupted")
        settings.listen, settings.http_listen = "127.0.0.1:0", f"127.0.0.1:{http_port}"
        server = OmaServer(App(settings))
        await server.start()
        await expect(page.locator("#live")).to_have_attribute("data-live", "live", timeout=WAIT_MS)
        await expect(page.locator("#problem")).to_be_hidden()
        async with oma_channel(server) as channel:
            retried = await replication_pb2_grpc.ReplicationServiceStub(channel).RetryReplicationJob(
                replication_pb2.RetryReplicationJobRequest(id=failing.job_id)
            )
            # a change after the reconnect reaches the page: the stream resumed (its first events are changes)
            await expect(job_card(page, retried.job.id)).to_be_visible(timeout=WAIT_MS)
            await expect(job_card(page, job_id).locator(".job-bar .bar")).to_have_attribute("data-percent", "100")

            # The viewer's token is revoked: the live stream ends and the page says to log in again.
            await access_pb2_grpc.AccessServiceStub(channel).RevokeApiToken(
                access_pb2.RevokeApiTokenRequest(id=viewer.token.id)
            )
            await expect(page.locator("#live")).to_have_attribute("data-live", "down", timeout=WAIT_MS)
            await expect(page.locator("#live")).to_have_text("logged out")
            await expect(page.locator("#login-again")).to_be_visible()
    finally:
        await server.stop(grace=0.2)
