"""`cmrsdk serve` with a real PACS: instances/s received and seconds from last instance to SEG in the PACS.

A private Orthanc (loopback, generated configuration) holds a real 20-phase Sunnybrook cine
(240 images). Measured:

1. dcmtk's storescu -> node, one association: instances per second received (the node's
   spool write with fsync included; the node does nothing else meanwhile).
2. Orthanc -> node (REST ``/modalities/{id}/store``, synchronous) -> node segments -> SEG per
   phase (and SR, when the study writer writes one) C-STOREd back into Orthanc: instances per
   second of that transfer, and seconds from the store's return (last instance acknowledged)
   to every result file stored in Orthanc, polled every 0.2 s. That latency includes the
   ``--series-timeout`` (given here), which is the node waiting for more instances.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/serve_latency.py [--series-timeout 2]``
(about 2 to 4 minutes on the shared 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _dicom_node import NodeProcess, Orthanc, free_port, storescu, sunnybrook_files, wait_for  # noqa: E402


def series_results(orthanc: Orthanc, study: str) -> int:
    return sum(
        len(orthanc.get(f"/series/{s}")["Instances"])
        for s in orthanc.get(f"/studies/{study}")["Series"]
        if orthanc.get(f"/series/{s}")["MainDicomTags"].get("Modality") in ("SEG", "SR")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--series", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "sunnybrook" / "SCD0000101")
    )
    parser.add_argument("--series-timeout", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = sunnybrook_files(Path(args.series))
        results: dict = {
            "instances": len(files),
            "series_timeout_s": args.series_timeout,
            "load_average_at_start": os.getloadavg(),
        }

        # 1. storescu -> node, nothing else going on
        port = free_port()
        node = NodeProcess(
            root / "spool1", root / "out1", port, log_path=root / "node1.log", series_timeout=3600, wait_ready=True
        )
        t0 = time.monotonic()
        r = storescu(port, files)
        elapsed = time.monotonic() - t0
        assert r.returncode == 0 and r.stdout.count("(Success)") + r.stderr.count("(Success)") == len(files), r.stderr[
            -2000:
        ]
        node.terminate()
        results["storescu_to_node"] = {"seconds": round(elapsed, 2), "instances_per_s": round(len(files) / elapsed, 1)}

        # 2. Orthanc -> node -> Orthanc
        port = free_port()
        orthanc = Orthanc(root / "orthanc", {"cmrsdk": ("CMRSDK", port)})
        node = NodeProcess(
            root / "spool2",
            root / "out2",
            port,
            "--forward",
            f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
            log_path=root / "node2.log",
            series_timeout=args.series_timeout,
            wait_ready=True,
        )
        try:
            assert storescu(orthanc.dicom_port, files, called="ORTHANC").returncode == 0
            uid = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    f"import pydicom; print(pydicom.dcmread({str(files[0])!r}, "
                    "stop_before_pixels=True).SeriesInstanceUID)",
                ],
                capture_output=True,
                text=True,
            ).stdout.strip()
            series = next(x["ID"] for x in orthanc.request("POST", "/tools/lookup", uid) if x["Type"] == "Series")
            study = orthanc.get(f"/series/{series}")["ParentStudy"]
            t0 = time.monotonic()
            orthanc.request("POST", "/modalities/cmrsdk/store", {"Resources": [series], "Synchronous": True})
            sent = time.monotonic() - t0
            # results are renamed into place whole (hidden ".partial" folders before that)
            final = wait_for(
                lambda: [d for d in (root / "out2").iterdir() if not d.name.startswith(".")],
                600,
                "results written",
                0.2,
            )[0]
            expected = len(list(final.glob("*.dcm")))
            wait_for(lambda: series_results(orthanc, study) >= expected, 600, "results in Orthanc", 0.2)
            latency = time.monotonic() - t0 - sent
            report = json.loads((final / "report.json").read_text())
            wait_for(lambda: "result files forwarded" in node.text(), 30, "the node's log line")
            results["orthanc_to_node"] = {"seconds": round(sent, 2), "instances_per_s": round(len(files) / sent, 1)}
            results["last_instance_to_results_in_orthanc_s"] = round(latency, 1)
            results["result_files"] = expected
            results["report_timings_ms"] = {k: report["timings_ms"][k] for k in ("read", "wall")}  # wall: the pipeline
            results["node_log"] = [
                line.split(" INFO ", 1)[1] for line in node.text().splitlines() if " INFO series " in line
            ]
        finally:
            node.terminate()
            orthanc.close()
        results["load_average_at_end"] = os.getloadavg()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
