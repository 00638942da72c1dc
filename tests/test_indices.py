"""``build_kv_indices``: the slot / page-id lists the kernels read, against a torch reference --
whole sequences, a window that starts past the first page, a slot mapping (a hybrid pool's
full-to-window table), caller-owned buffers with stale contents."""
import pytest
import torch

from sgl_kernel_sm12x.attention.indices import build_kv_indices


def _reference(req_to_token, rows, lens, page, start=None, mapping=None):
    out, indptr = [], [0]
    for b, r in enumerate(rows.tolist()):
        s = 0 if start is None else int(start[b])
        n = int(lens[b])
        ids = req_to_token[r, s:s + n].long()
        if page > 1:
            ids = ids[::page]
        if mapping is not None:
            ids = mapping[ids].long()
        if page > 1:
            ids = ids // page
        out += ids.tolist()
        indptr.append(len(out))
    return torch.tensor(indptr, dtype=torch.int32), torch.tensor(out, dtype=torch.int32)


@pytest.mark.parametrize("with_mapping", [False, True])
@pytest.mark.parametrize("windowed", [False, True])
@pytest.mark.parametrize("page", [1, 16])
def test_lists_match_reference(page, windowed, with_mapping, device):
    rows_total, ctx, slots = 6, 300, 4096
    # each request's tokens occupy whole pages of the pool, in a random page order
    perm = torch.randperm(slots // page)
    req_to_token = torch.zeros(rows_total, ctx, dtype=torch.int32)
    for r in range(rows_total):
        pages = perm[r * (ctx // page + 1):(r + 1) * (ctx // page + 1)]
        req_to_token[r] = (pages[:, None] * page + torch.arange(page)).flatten()[:ctx].to(torch.int32)
    rows = torch.tensor([4, 0, 5, 2], dtype=torch.int64)
    full = torch.tensor([1, 0, 257, int(torch.randint(2, ctx, ()))], dtype=torch.int32)
    start = lens = None
    if windowed:
        w = 37
        first = (full - w).clamp(min=0)
        start = (first // page) * page
        lens = full - start
    else:
        lens = full
    mapping = None
    if with_mapping:   # a page-preserving table, as a hybrid pool's allocator keeps pages whole
        pm = torch.randperm(slots // page)
        mapping = (pm[:, None] * page + torch.arange(page)).flatten().to(torch.int64)
    ref_ptr, ref_ids = _reference(req_to_token, rows, lens, page, start, mapping)
    kw = dict(page_size=page, start=None if start is None else start.to(device),
              mapping=None if mapping is None else mapping.to(device))
    indptr, ids = build_kv_indices(req_to_token.to(device), rows.to(device), lens.to(device), **kw)
    assert torch.equal(indptr.cpu(), ref_ptr)
    assert torch.equal(ids[: int(ref_ptr[-1])].cpu(), ref_ids)
    # caller-owned buffers holding stale values: the listed part is rewritten, indptr from zero
    buf_ptr = torch.full((9,), 77, dtype=torch.int32, device=device)
    buf_ids = torch.full((2000,), -5, dtype=torch.int32, device=device)
    indptr, ids = build_kv_indices(req_to_token.to(device), rows.to(device), lens.to(device), kv_indptr=buf_ptr,
                                   kv_indices=buf_ids, **kw)
    assert torch.equal(indptr.cpu(), ref_ptr)
    assert torch.equal(ids[: int(ref_ptr[-1])].cpu(), ref_ids)


def test_bad_arguments_are_named():
    t = torch.zeros(2, 8, dtype=torch.int32)
    rows = torch.zeros(2, dtype=torch.int64)
    lens = torch.ones(2, dtype=torch.int32)
    with pytest.raises(ValueError, match="start: expected \\(2,\\)"):
        build_kv_indices(t, rows, lens, start=torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="mapping: expected a 1-D int32/int64"):
        build_kv_indices(t, rows, lens, mapping=torch.zeros(4))
