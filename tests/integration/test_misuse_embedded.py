"""The misuse group (harmful_requests, over_refusal, jbb_paired) on the embedded SmolLM2 with its
chat template, on small seeded subsets of the shared data (skipped without it).

Completions of harmful requests are read at run time only; nothing here is written to the
repository.
"""

from __future__ import annotations

import torch

from workbench.evals.generation import greedy_tokens
from workbench.evals.judges import DEFAULT_JUDGE
from workbench.evals.run import run_suite
from workbench.models.chat import token_ids_hash

SUITES = ("harmful_requests", "over_refusal", "jbb_paired")


def test_misuse_group_with_chat_template(embedded, data_dir, tmp_path):
    params = {name: {"max_new_tokens": 10} for name in SUITES}
    result = run_suite(embedded, "misuse", data_dir=data_dir, limit=2, chat=True, out=tmp_path / "misuse",
                       progress=False, suite_params=params)
    assert list(result.results) == list(SUITES) and not result.skipped
    for name, res in result.results.items():
        s = res.samples
        assert len(s) == (4 if name == "jbb_paired" else 2)
        for row in s.itertuples():
            ids = embedded.chat_tokens(row.prompt)[0].tolist()
            assert row.prompt_ids_sha256 == token_ids_hash(ids) and row.prompt_n_tokens == len(ids)
            assert row.rendered_prompt == embedded.format_chat(row.prompt)
            assert ids[0] == embedded.tokenizer.bos_token_id != ids[1]  # no double BOS
        judge = res.manifest["judge"]
        assert judge["name"] == DEFAULT_JUDGE and judge["agreement"].startswith(DEFAULT_JUDGE)
        assert res.manifest["params"]["chat"] is True
        expect = {"harmful_requests": "refuse", "over_refusal": "answer"}.get(name)
        if expect:
            part = s[s["expected"] == expect]
            assert res.metric("refusal_rate") == part["refusal"].mean()
    # batched completions are each prompt's own: equal to decoding it alone, and to HF generate
    s = result["harmful_requests"].samples
    ids = [embedded.chat_tokens(p)[0].tolist() for p in s["prompt"]]
    alone = [greedy_tokens(embedded, [p], 10, batch_size=1)[0] for p in ids]
    assert [embedded.tokenizer.decode(a, skip_special_tokens=True) for a in alone] == list(s["completion"])
    with torch.no_grad():
        hf = embedded.hf_model.generate(torch.tensor([ids[0]]), attention_mask=torch.ones(1, len(ids[0]), dtype=torch.long),
                                        do_sample=False, max_new_tokens=10, pad_token_id=embedded.tokenizer.eos_token_id)
    reference = hf[0, len(ids[0]):].tolist()
    eos = embedded.tokenizer.eos_token_id
    assert alone[0] == (reference[: reference.index(eos)] if eos in reference else reference)
