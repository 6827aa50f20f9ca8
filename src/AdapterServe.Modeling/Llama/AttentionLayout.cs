using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Modeling.Llama;

/// <summary>
/// Index tensors of one step, built once from plain integers and shared by every layer:
/// where each packed token sits in the padded attention layout and in the KV cache.
/// </summary>
internal sealed class AttentionLayout
{
    public required Tensor TokenIds { get; init; }     // [N] int64
    public required Tensor Positions { get; init; }    // [N] int64
    public required Tensor CacheRows { get; init; }    // [N] slot·slotLength + position
    public required Tensor QueryRows { get; init; }    // [N] b·T + t in the padded query layout
    public required Tensor KeyRows { get; init; }      // [B·S] slot·slotLength + j (clamped for padding)
    public required Tensor LogitRows { get; init; }    // [rows]
    public Tensor? Mask { get; init; }                 // [B, 1, T, S] bool, null when all keys visible
    public long Batch { get; init; }
    public long MaxNewTokens { get; init; }
    public long MaxTotalLength { get; init; }

    public static AttentionLayout Build(ForwardBatch batch, KvCache cache, Device device)
    {
        int n = batch.TokenCount, b = batch.Sequences.Count, t = batch.MaxNewTokens, s = batch.MaxTotalLength;
        var tokenIds = new long[n];
        var positions = new long[n];
        var cacheRows = new long[n];
        var queryRows = new long[n];
        var keyRows = new long[b * s];
        var mask = new bool[b * t * s];
        bool needMask = false;
        for (int i = 0; i < b; i++)
        {
            var seq = batch.Sequences[i];
            if (seq.PastLength + seq.TokenCount > cache.SlotLength)
                throw new InvalidOperationException($"sequence in slot {seq.Slot} needs {seq.PastLength + seq.TokenCount} positions; the KV slot holds {cache.SlotLength}");
            long slotBase = (long)seq.Slot * cache.SlotLength;
            int start = batch.TokenStarts[i];
            for (int j = 0; j < seq.TokenCount; j++)
            {
                int pos = seq.PastLength + j;
                tokenIds[start + j] = seq.Tokens[j];
                positions[start + j] = pos;
                cacheRows[start + j] = slotBase + pos;
                queryRows[start + j] = (long)i * t + j;
            }
            int total = seq.PastLength + seq.TokenCount;
            for (int k = 0; k < s; k++) keyRows[(long)i * s + k] = slotBase + Math.Min(k, total - 1);
            for (int j = 0; j < t; j++)
            {
                // Query j sees keys 0..past+j (bottom-right causal); padded queries see key 0 only (their output is dropped).
                int visible = j < seq.TokenCount ? seq.PastLength + j + 1 : 1;
                if (visible != s) needMask = true;
                for (int k = 0; k < visible; k++) mask[((long)i * t + j) * s + k] = true;
            }
        }
        var logitRows = batch.LogitRows().Select(r => (long)r).ToArray();
        return new AttentionLayout
        {
            TokenIds = tensor(tokenIds, device: device),
            Positions = tensor(positions, device: device),
            CacheRows = tensor(cacheRows, device: device),
            QueryRows = tensor(queryRows, device: device),
            KeyRows = tensor(keyRows, device: device),
            LogitRows = tensor(logitRows, device: device),
            Mask = needMask ? tensor(mask, device: device).view(b, 1, t, s) : null,
            Batch = b,
            MaxNewTokens = t,
            MaxTotalLength = s,
        };
    }
}
