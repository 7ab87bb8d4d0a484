"""Writes data/ml-100k/u.data from the ml-100k copy inside the recbole wheel.

MovieLens may not be redistributed, so the repository holds no copy; the
recbole wheel on PyPI ships ``recbole/dataset_example/ml-100k/ml-100k.inter``
(tab-separated user, item, rating, timestamp with a typed header). This
downloads the wheel (no install), drops the header and writes the GroupLens
``u.data`` layout atomically.

    python tools/fetch_ml100k.py [--out data/ml-100k/u.data]
"""

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import zipfile

MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join("data", "ml-100k", "u.data"))
    parser.add_argument("--recbole", default="recbole==1.2.1")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.check_call([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                               "-d", tmp, args.recbole])
        wheel = glob.glob(os.path.join(tmp, "recbole-*.whl"))[0]
        with zipfile.ZipFile(wheel) as archive:
            lines = archive.read(MEMBER).decode("utf-8").splitlines()
    header, rows = lines[0], [line for line in lines[1:] if line.strip()]
    if not header.startswith("user_id") or len(rows) != 100_000:
        raise SystemExit(f"unexpected {MEMBER}: header {header!r}, {len(rows)} rows")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    partial = args.out + ".partial"
    with open(partial, "w") as f:
        for row in rows:
            user, item, rating, timestamp = row.split("\t")
            f.write(f"{user}\t{item}\t{int(float(rating))}\t{int(float(timestamp))}\n")
    os.replace(partial, args.out)
    print(f"wrote {len(rows)} ratings to {args.out}")


if __name__ == "__main__":
    main()
