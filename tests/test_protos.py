"""The generated stubs match protos/ and the contract keeps the names clients rely on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from engine.service.proto.mmrec.v1 import recommender_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent


def test_generated_stubs_are_fresh() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "protos" / "generate.py"), "--check"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_fixed_contract_names() -> None:
    service = pb.DESCRIPTOR.services_by_name["Recommender"]
    assert service.full_name == "mmrec.v1.Recommender"
    methods = {m.name: m for m in service.methods}
    assert methods["Search"].input_type.name == "SearchRequest"
    assert methods["Search"].output_type.name == "SearchResponse"
    assert methods["UpsertItems"].client_streaming
    assert {"GetItems", "DeleteItems"} <= set(methods)
    fields = {f.name: f.type for f in pb.SearchRequest.DESCRIPTOR.fields}
    fd = pb.SearchRequest.DESCRIPTOR.fields_by_name
    assert fd["text"].type == fd["text"].TYPE_STRING
    assert fd["image"].type == fd["image"].TYPE_BYTES
    assert fd["top_k"].type == fd["top_k"].TYPE_UINT32
    assert "tenant" in fields
    assert pb.SearchResponse.DESCRIPTOR.fields_by_name["results"].message_type.name == "ScoredItem"
    scored = pb.ScoredItem.DESCRIPTOR.fields_by_name
    assert scored["id"].type == scored["id"].TYPE_STRING
    assert scored["score"].type == scored["score"].TYPE_FLOAT
    assert pb.GetItemsRequest.DESCRIPTOR.fields_by_name["ids"].is_repeated
    assert pb.GetItemsResponse.DESCRIPTOR.fields_by_name["items"].message_type.name == "Item"
    assert "tenant" in pb.Item.DESCRIPTOR.fields_by_name
