"""The chunked ("gradient cache") contrastive step: same loss and gradients as the plain step."""
import pytest
import torch

from clip4clip.engine.gradcache import RngState, encode_chunks, split_batch
from clip4clip.engine.precision import autocast
from clip4clip.engine.step import ContrastiveStep
from speed_utils import PROBES, assert_grads_close, grads, tiny_batch, tiny_model

CPU = torch.device("cpu")


def _step(chunk_size, checkpointing=False, batch=None, head="seqTransf"):
    model = tiny_model(head=head)
    model.clip.set_grad_checkpointing(checkpointing)
    loss = ContrastiveStep(model, chunk_size=chunk_size)(batch or tiny_batch(8))
    return loss, grads(model, PROBES if head == "seqTransf" else [p for p in PROBES if not p.startswith("head")])


@pytest.mark.parametrize("chunk_size", [1, 3])  # 3: chunks of unequal size (3, 3, 2)
def test_chunked_step_matches_plain_step(chunk_size):
    torch.set_num_threads(1)
    loss, g = _step(0)
    loss_c, g_c = _step(chunk_size)
    assert loss_c.item() == pytest.approx(loss.item(), abs=1e-5)
    assert_grads_close(g_c, g)
    assert g["clip.logit_scale"].abs() > 0  # the temperature's gradient arrives through the cache


def test_chunked_step_with_activation_checkpointing_and_meanP_head():
    torch.set_num_threads(1)
    loss, g = _step(0, head="meanP")
    loss_c, g_c = _step(4, checkpointing=True, head="meanP")
    assert loss_c.item() == pytest.approx(loss.item(), abs=1e-5)
    assert_grads_close(g_c, g)


def test_replayed_random_state_gives_the_same_embeddings_under_dropout():
    model = tiny_model()
    model.head.transformer.resblocks[0].mlp.add_module("drop", torch.nn.Dropout(0.5))  # random per call
    chunks = split_batch(tiny_batch(6), 4)
    _, video, states = encode_chunks(model, chunks, lambda: autocast(CPU, "fp32"), CPU)
    for i, (chunk, state) in enumerate(zip(chunks, states)):
        state.restore()
        out = model(chunk["input_ids"], chunk["attention_mask"], chunk["video"], chunk["video_mask"])
        lo = 4 * i
        torch.testing.assert_close(out["video_emb"], video[lo:lo + len(chunk["video"])], atol=0, rtol=0)
    RngState(CPU)  # captures without a GPU


def test_bad_chunk_sizes_are_refused():
    with pytest.raises(ValueError, match="chunk_size"):
        split_batch(tiny_batch(2), 0)
    with pytest.raises(ValueError, match="loss_chunk_size"):
        ContrastiveStep(tiny_model(), chunk_size=-1)
