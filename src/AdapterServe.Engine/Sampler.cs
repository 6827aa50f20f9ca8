namespace AdapterServe.Engine;

/// <summary>
/// Picks the next token from one row of logits: greedy, or temperature → top-k → top-p → a draw from the
/// sequence's own seeded generator, so a seeded request gives the same tokens whatever else shares its batch.
/// <para>
/// Never a sort of the vocabulary (a full sort of 49k tokens costs 5–10 ms per sampled token on this CPU, as much as a
/// whole batch-16 forward for 16 sequences). Without top-k and top-p (the OpenAI default) nothing needs ranking: the
/// draw walks the cumulative distribution in id order, three linear passes. With top-k or top-p the walk is in rank
/// order (scaled logit, highest first; ties: lower id first): with top-k the k best are selected in one pass and
/// sorted; with top-p alone the tokens come out of a heap as far as the nucleus and the draw need them. The normaliser
/// over the whole vocabulary (top-p alone) is summed in id order.
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
        if (p.TopK <= 0 && p.TopP >= 1) return DrawOverVocabulary(scaled, scratch.Probs, v);

        var ranking = new Ranking(scaled, scratch.Keys, v, p.TopK > 0 ? Math.Min(p.TopK, v) : v);
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

    /// <summary>
    /// A draw from softmax(scaled) over the whole vocabulary (no top-k, no nucleus): no ranking is needed, so the
    /// cumulative walk runs in id order, three linear passes.
    /// </summary>
    private int DrawOverVocabulary(float[] scaled, double[] probs, int v)
    {
        double max = double.NegativeInfinity;
        for (int i = 0; i < v; i++) if (scaled[i] > max) max = scaled[i];
        double sum = 0;
        for (int i = 0; i < v; i++) sum += probs[i] = Math.Exp(scaled[i] - max);
        double u = _random.NextDouble() * sum, acc = 0;
        int last = 0;
        for (int i = 0; i < v; i++)
        {
            if (probs[i] == 0) continue;
            acc += probs[i];
            if (u < acc) return i;
            last = i;
        }
        return last;
    }

    public static int ArgMax(ReadOnlySpan<float> logits)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
        return best;
    }

    /// <summary>
    /// The first <see cref="Count"/> tokens in rank order, one at a time. Each token is one 64-bit key, larger = ranked
    /// earlier: the scaled logit's bits made orderable (NaN lowest, −0 = +0) above the id's complement, so one integer
    /// comparison orders by logit, then by lower id. With a cut (Count &lt; vocabulary) the best Count are selected in
    /// one pass through a min-heap and sorted; otherwise a max-heap over the whole vocabulary is built in linear time
    /// and popped.
    /// </summary>
    private struct Ranking
    {
        private readonly ulong[] _heap;
        private readonly int _vocabulary;
        private readonly bool _selected;
        private int _size;
        private int _next;

        public Ranking(float[] scaled, ulong[] keys, int vocabulary, int count)
        {
            _heap = keys;
            _vocabulary = vocabulary;
            Count = count;
            _selected = count < vocabulary;
            if (_selected)
            {
                // The count best in a min-heap (its root is the worst of them), then sorted best first.
                for (int id = 0; id < count; id++) keys[id] = Key(scaled, id, vocabulary);
                _size = count;
                for (int i = count / 2 - 1; i >= 0; i--) SiftDown(i, largestFirst: false);
                for (int id = count; id < vocabulary; id++)
                {
                    ulong key = Key(scaled, id, vocabulary);
                    if (key > keys[0]) { keys[0] = key; SiftDown(0, largestFirst: false); }
                }
                Array.Sort(keys, 0, count);
                Array.Reverse(keys, 0, count);
            }
            else
            {
                for (int id = 0; id < vocabulary; id++) keys[id] = Key(scaled, id, vocabulary);
                _size = vocabulary;
                for (int i = vocabulary / 2 - 1; i >= 0; i--) SiftDown(i, largestFirst: true);
            }
        }

        /// <summary>Tokens that can be taken.</summary>
        public int Count { get; }

        /// <summary>The next token in rank order.</summary>
        public int Next()
        {
            ulong top;
            if (_selected) top = _heap[_next++];
            else
            {
                top = _heap[0];
                _heap[0] = _heap[--_size];
                if (_size > 0) SiftDown(0, largestFirst: true);
            }
            return _vocabulary - 1 - (int)(uint)top;
        }

        private static ulong Key(float[] scaled, int id, int vocabulary)
        {
            float f = scaled[id];
            uint ordered = float.IsNaN(f) ? 0u
                : f == 0 ? 0x8000_0000u                                             // −0 ranks with +0
                : BitConverter.SingleToInt32Bits(f) is var bits && bits >= 0 ? (uint)bits | 0x8000_0000u : ~(uint)bits;
            return ((ulong)ordered << 32) | (uint)(vocabulary - 1 - id);           // equal logits: the lower id is larger
        }

        private readonly void SiftDown(int i, bool largestFirst)
        {
            var heap = _heap;
            int size = _size;
            while (true)
            {
                int l = 2 * i + 1, r = l + 1, pick = i;
                if (l < size && (largestFirst ? heap[l] > heap[pick] : heap[l] < heap[pick])) pick = l;   // keys are unique (the id)
                if (r < size && (largestFirst ? heap[r] > heap[pick] : heap[r] < heap[pick])) pick = r;
                if (pick == i) return;
                (heap[i], heap[pick]) = (heap[pick], heap[i]);
                i = pick;
            }
        }
    }

    /// <summary>The engine thread's buffers for one vocabulary size, reused by every sampled token.</summary>
    private sealed class Scratch
    {
        [ThreadStatic] private static Scratch? _current;

        private Scratch(int v)
        {
            Scaled = new float[v];
            Keys = new ulong[v];
            Ranked = new int[v];
            Probs = new double[v];
        }

        public float[] Scaled { get; }
        public ulong[] Keys { get; }
        public int[] Ranked { get; }
        public double[] Probs { get; }

        public static Scratch For(int v) => _current is { } s && s.Scaled.Length == v ? s : _current = new Scratch(v);
    }
}
