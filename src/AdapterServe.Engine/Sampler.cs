namespace AdapterServe.Engine;

/// <summary>
/// Picks the next token from one row of logits: greedy, or temperature → top-k → top-p → a draw from the
/// sequence's own seeded generator, so a seeded request gives the same tokens whatever else shares its batch.
/// <para>
/// Tokens are ranked by scaled logit, highest first (ties: lower id first), but never fully sorted: a full sort of a
/// 49k vocabulary costs 5–10 ms per sampled token on this CPU (as much as a whole batch-16 forward for 16 sequences).
/// With top-k only the k best are selected (one pass) and sorted; without it the tokens come out of a heap in rank
/// order for as long as the nucleus or the draw needs them, usually a handful. The normaliser over the whole
/// vocabulary (no top-k) is summed in id order.
/// </para>
/// </summary>
public sealed class Sampler(SamplingParams p, int choiceIndex)
{
    private readonly Random _random = p.Seed is long seed ? new Random(unchecked((int)(seed * 1_000_003 + choiceIndex))) : new Random();

    public bool IsGreedy => p.Temperature <= 0 || p.TopK == 1;

    public int Sample(ReadOnlySpan<float> logits)
    {
        if (IsGreedy) return ArgMax(logits);
        int v = logits.Length;
        var scratch = Scratch.For(v);
        var scaled = scratch.Scaled;
        float t = p.Temperature;
        for (int i = 0; i < v; i++) scaled[i] = logits[i] / t;

        var ranking = new Ranking(scaled, scratch.Ids, v, p.TopK > 0 ? Math.Min(p.TopK, v) : v);
        var ranked = scratch.Ranked;      // ids in rank order, as far as taken
        var probs = scratch.Probs;        // exp(scaled − max) of ranked[i]
        ranked[0] = ranking.Next();
        double max = scaled[ranked[0]];
        probs[0] = Math.Exp(scaled[ranked[0]] - max);
        int taken = 1;
        void Take()
        {
            int id = ranked[taken] = ranking.Next();
            probs[taken++] = Math.Exp(scaled[id] - max);
        }

        int keep = ranking.Count;
        double sum = 0;
        if (keep < v)
        {
            while (taken < keep) Take();
            for (int i = 0; i < keep; i++) sum += probs[i];
        }
        else
            for (int i = 0; i < v; i++) sum += Math.Exp(scaled[i] - max);                     // in id order: no ranking needed
        if (p.TopP < 1)
        {
            // The nucleus: the fewest best tokens whose probability reaches top_p.
            double cumulative = 0;
            for (int i = 0; i < keep; i++)
            {
                if (i == taken) Take();
                cumulative += probs[i] / sum;
                if (cumulative >= p.TopP) { keep = i + 1; break; }
            }
            sum = 0;
            for (int i = 0; i < keep; i++) sum += probs[i];
        }
        double u = _random.NextDouble() * sum, acc = 0;
        for (int i = 0; i < keep; i++)
        {
            if (i == taken) Take();
            acc += probs[i];
            if (u < acc) return ranked[i];
        }
        while (taken < keep) Take();
        return ranked[keep - 1];
    }

    public static int ArgMax(ReadOnlySpan<float> logits)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
        return best;
    }

    /// <summary>True when token <paramref name="a"/> ranks before <paramref name="b"/>: higher scaled logit (NaN lowest), then lower id.</summary>
    private static bool Before(float[] scaled, int a, int b)
    {
        int c = scaled[b].CompareTo(scaled[a]);
        return c != 0 ? c < 0 : a < b;
    }

    /// <summary>
    /// The first <see cref="Count"/> tokens in rank order, one at a time. With a cut (Count &lt; vocabulary) they are
    /// selected in one pass through a min-heap of Count and sorted; otherwise a max-heap over the whole vocabulary is
    /// built in linear time and popped.
    /// </summary>
    private struct Ranking
    {
        private readonly float[] _scaled;
        private readonly int[] _heap;
        private int _size;
        private int _next;
        private readonly bool _selected;

        public Ranking(float[] scaled, int[] ids, int vocabulary, int count)
        {
            _scaled = scaled;
            Count = count;
            _selected = count < vocabulary;
            if (_selected)
            {
                // The count best in a min-heap (its root is the worst of them), then sorted best first.
                _heap = ids;
                for (int i = 0; i < count; i++) _heap[i] = i;
                _size = count;
                for (int i = count / 2 - 1; i >= 0; i--) SiftDown(i, worstFirst: true);
                for (int id = count; id < vocabulary; id++)
                    if (Before(scaled, id, _heap[0])) { _heap[0] = id; SiftDown(0, worstFirst: true); }
                Array.Sort(ids, 0, count, Comparer<int>.Create((a, b) => a == b ? 0 : Before(scaled, a, b) ? -1 : 1));
            }
            else
            {
                _heap = ids;
                for (int i = 0; i < vocabulary; i++) _heap[i] = i;
                _size = vocabulary;
                for (int i = vocabulary / 2 - 1; i >= 0; i--) SiftDown(i, worstFirst: false);
            }
        }

        /// <summary>Tokens that can be taken.</summary>
        public int Count { get; }

        /// <summary>The next token in rank order.</summary>
        public int Next()
        {
            if (_selected) return _heap[_next++];
            int top = _heap[0];
            _heap[0] = _heap[--_size];
            if (_size > 0) SiftDown(0, worstFirst: false);
            return top;
        }

        private void SiftDown(int i, bool worstFirst)
        {
            var heap = _heap;
            while (true)
            {
                int l = 2 * i + 1, r = l + 1, pick = i;
                if (l < _size && Above(heap[l], heap[pick], worstFirst)) pick = l;
                if (r < _size && Above(heap[r], heap[pick], worstFirst)) pick = r;
                if (pick == i) return;
                (heap[i], heap[pick]) = (heap[pick], heap[i]);
                i = pick;
            }
        }

        /// <summary>Whether <paramref name="a"/> belongs above <paramref name="b"/> in the heap.</summary>
        private readonly bool Above(int a, int b, bool worstFirst) => worstFirst ? Before(_scaled, b, a) : Before(_scaled, a, b);
    }

    /// <summary>The engine thread's buffers for one vocabulary size, reused by every sampled token.</summary>
    private sealed class Scratch
    {
        [ThreadStatic] private static Scratch? _current;

        private Scratch(int v)
        {
            Scaled = new float[v];
            Ids = new int[v];
            Ranked = new int[v];
            Probs = new double[v];
        }

        public float[] Scaled { get; }
        public int[] Ids { get; }
        public int[] Ranked { get; }
        public double[] Probs { get; }

        public static Scratch For(int v) => _current is { } s && s.Scaled.Length == v ? s : _current = new Scratch(v);
    }
}
