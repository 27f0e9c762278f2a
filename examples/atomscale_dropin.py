"""A script written for the official Atomscale SDK, run unchanged on labstream.

``main()`` is the SDK's documented usage of ``TimeseriesStreamer`` (create a streamer, initialize,
``push``, ``push_multi``, generator-mode ``run``, ``finalize``), written as an SDK user writes it.
The only change is the import line. Nothing else is adapted: the same arguments, the same calls,
``finalize(data_id)`` without using its return value.

What labstream adds without a code change: ``finalize()`` waits until every chunk is confirmed,
failed uploads are retried instead of lost, and setting ``LABSTREAM_ATLAS=host:port`` sends the same
data to ATLAS too.

    python examples/atomscale_dropin.py          # local Atomscale and ATLAS emulators
    AS_API_KEY=... AS_API_ENDPOINT=https://api.atomscale.ai python examples/atomscale_dropin.py
"""

import os
import time

from labstream import TimeseriesStreamer  # was: from atomscale.streaming import TimeseriesStreamer

PROJECT_ID = "5f0c1f5e-8d0a-4a39-9a3c-3b1e0f6d2a11"


def data_chunks(timestamps, values, chunk_size=100):
    for start in range(0, len(timestamps), chunk_size):
        yield (
            timestamps[start : start + chunk_size],
            values[start : start + chunk_size],
        )


def main():
    streamer = TimeseriesStreamer(
        api_key=os.environ["AS_API_KEY"],
        endpoint=os.environ.get("AS_API_ENDPOINT"),
        points_per_chunk=100,
    )

    data_id = streamer.initialize(
        stream_name="MBE growth - temperature log",
        physical_sample="GaN-001",
        synth_source_id=1,
        project_id=PROJECT_ID,
    )

    timestamps = [time.time() + i * 0.1 for i in range(100)]
    values = [25.0 + i * 0.01 for i in range(100)]
    streamer.push(
        data_id,
        chunk_index=0,
        channel_name="temperature",
        timestamps=timestamps,
        values=values,
        units="C",
    )

    timestamps = [timestamps[-1] + (i + 1) * 0.1 for i in range(100)]
    temp_values = [26.0 + i * 0.01 for i in range(100)]
    pressure_values = [2.0e-9 * (1 + i * 0.001) for i in range(100)]
    streamer.push_multi(
        data_id,
        chunk_index=1,
        channels={
            "temperature": {"timestamps": timestamps, "values": temp_values, "units": "C"},
            "pressure": {"timestamps": timestamps, "values": pressure_values, "units": "mbar"},
        },
    )
    streamer.finalize(data_id)

    all_timestamps = [time.time() - 1000 + i * 0.5 for i in range(1000)]
    all_values = [600.0 + (i % 50) * 0.1 for i in range(1000)]
    data_id = streamer.initialize(stream_name="Pyrometer log")
    streamer.run(
        data_id,
        channel_name="temperature",
        data_iter=data_chunks(all_timestamps, all_values),
        units="C",
    )
    streamer.finalize(data_id)


# --------------------------------------------------------------------------------------------------
# Not part of the SDK script: without a configured Atomscale, run it against local emulators.


def _run_against_emulators() -> None:
    import atexit
    import shutil
    import tempfile

    from labstream.testing import atlas as atlas_emulator
    from labstream.testing import atomscale as atomscale_emulator

    # The streamer is closed at interpreter exit (the SDK script never closes it): keep its
    # scratch journal until then, and remove it after.
    spool = tempfile.mkdtemp(prefix="labstream-example-")
    atexit.register(shutil.rmtree, spool, ignore_errors=True)
    with (
        atomscale_emulator.run_in_thread() as atomscale,
        atlas_emulator.run_in_thread() as atlas,
    ):
        os.environ.update(
            AS_API_KEY="example-key",  # the emulator accepts any key
            AS_API_ENDPOINT=atomscale.url,
            LABSTREAM_ATLAS=atlas.address,  # configuration only: the script is unchanged
            LABSTREAM_ATLAS_KEY_GENERATOR=atlas.key_generator_address,
            LABSTREAM_SPOOL_DIR=spool,
        )
        print(f"running the SDK script against the Atomscale emulator at {atomscale.url}")
        print(f"with LABSTREAM_ATLAS={atlas.address} (the ATLAS Stream API emulator)\n")
        main()
        for stream in atomscale.summary()["streams"].values():
            counts = ", ".join(f"{c} {i['points']}" for c, i in stream["channels"].items())
            print(
                f"Atomscale stored {stream['stream_name']!r}: {counts} points; "
                f"finalized: {stream['finalized']}"
            )
        for report in atlas.reports():
            points = sum(len(p.values) for p in report.parameters.values())
            print(
                f"ATLAS session {report.identifier!r}: {points} samples; "
                f"protocol {'clean' if report.clean else 'NOT clean'}"
            )


if __name__ == "__main__":
    if os.environ.get("AS_API_ENDPOINT") or os.environ.get("AS_API_KEY"):
        main()
    else:
        _run_against_emulators()
