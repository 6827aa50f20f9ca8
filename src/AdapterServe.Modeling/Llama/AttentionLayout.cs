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
    public Tensor? QueryRows { get; init; }            // [N] b·T + t in the padded query layout; null when packed = padded
    public required Tensor KeyRows { get; init; }      // [B·S] slot·slotLength + j (clamped for padding)
    public Tensor? LogitRows { get; init; }            // [rows]; null when every packed row is a logit row, in order
    /// <summary>
    /// true = attend; null when every key is visible. Decode steps (T = 1): <c>[B, 1, 1, S]</c>, broadcast over the G query
    /// heads of a KV head; otherwise <c>[B, 1, T·G, S]</c>, each query row repeated for the G heads of its group.
    /// </summary>
    public Tensor? Mask { get; init; }
    public long Batch { get; init; }
    public long MaxNewTokens { get; init; }
    public long MaxTotalLength { get; init; }

    /// <param name="group">Query heads per KV head (G = H / KVH).</param>
    public static AttentionLayout Build(ForwardBatch batch, KvCache cache, int group, Device device)
    {
        int n = batch.TokenCount, b = batch.Sequences.Count, t = batch.MaxNewTokens, s = batch.MaxTotalLength;
        var tokenIds = new long[n];
        var positions = new long[n];
        var cacheRows = new long[n];
        var queryRows = new long[n];
        var keyRows = new long[b * s];
        var mask = new bool[b * t * s];
        bool needMask = false, padded = false;
        for (int i = 0; i < b; i++)
        {
            var seq = batch.Sequences[i];
            if (seq.PastLength + seq.TokenCount > cache.SlotLength)
                throw new InvalidOperationException($"sequence in slot {seq.Slot} needs {seq.PastLength + seq.TokenCount} positions; the KV slot holds {cache.SlotLength}");
            long slotBase = (long)seq.Slot * cache.SlotLength;
            int start = batch.TokenStarts[i];
            padded |= seq.TokenCount != t;
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
        bool allRows = logitRows.Length == n;                                  // rows are ascending: all rows = identity
        return new AttentionLayout
        {
            TokenIds = tensor(tokenIds, device: device),
            Positions = tensor(positions, device: device),
            CacheRows = tensor(cacheRows, device: device),
            QueryRows = padded ? tensor(queryRows, device: device) : null,
            KeyRows = tensor(keyRows, device: device),
            LogitRows = allRows ? null : tensor(logitRows, device: device),
            Mask = !needMask ? null
                : t == 1 ? tensor(mask, device: device).view(b, 1, 1, s)
                : tensor(RepeatRows(mask, b * t, s, group), device: device).view(b, 1, t * group, s),
            Batch = b,
            MaxNewTokens = t,
            MaxTotalLength = s,
        };
    }

    /// <summary>Each of the <paramref name="rows"/> rows of <paramref name="mask"/> (<paramref name="width"/> wide) repeated <paramref name="times"/> times.</summary>
    private static bool[] RepeatRows(bool[] mask, int rows, int width, int times)
    {
        if (times == 1) return mask;
        var repeated = new bool[mask.Length * times];
        for (int r = 0; r < rows; r++)
            for (int g = 0; g < times; g++)
                Array.Copy(mask, (long)r * width, repeated, ((long)r * times + g) * width, width);
        return repeated;
    }
}
