"""The OpenAI SDK's Batch API, unchanged, against ``promptmill serve``.

    PROMPTMILL_KEY=$(promptmill keys create my-team --role submitter)
    python examples/sdk_batch.py http://127.0.0.1:8080/v1 examples/openai-sdk-batch.jsonl

Only ``base_url`` and the key differ from code written for OpenAI.
"""

from __future__ import annotations

import os
import sys
import time

from openai import OpenAI


def main(base_url: str, path: str) -> None:
    client = OpenAI(base_url=base_url, api_key=os.environ["PROMPTMILL_KEY"])
    uploaded = client.files.create(file=open(path, "rb"), purpose="batch")  # noqa: SIM115
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    while batch.status not in ("completed", "failed", "cancelled", "expired"):
        time.sleep(1)
        batch = client.batches.retrieve(batch.id)
        print(batch.status, batch.request_counts)
    if batch.output_file_id:
        print(client.files.content(batch.output_file_id).text)
    if batch.error_file_id:
        print(client.files.content(batch.error_file_id).text)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
