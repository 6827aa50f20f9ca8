namespace AdapterServe.Adapters.Kinds;

/// <summary>
/// Values that loaded adapters publish while they live, by key, for other loads to reuse (a mixer's expert stacks, an
/// expert's rows of them). Several publications may share a key; a lookup uses the oldest. Thread-safe: loader threads
/// look up, loads and disposals publish and withdraw, all under one lock, so a value is never used after its withdrawal.
/// </summary>
internal sealed class Publications<TKey, TValue> where TKey : notnull
{
    private readonly Lock _gate = new();
    private readonly Dictionary<TKey, List<Publication>> _published = [];

    /// <summary>
    /// Publishes <paramref name="value"/> under <paramref name="key"/>; disposing the result withdraws it, then runs
    /// <paramref name="withdrawn"/> (once, under the lock).
    /// </summary>
    public IDisposable Publish(TKey key, TValue value, Action<TValue>? withdrawn = null)
    {
        var publication = new Publication(this, key, value, withdrawn);
        lock (_gate)
        {
            if (!_published.TryGetValue(key, out var list)) _published[key] = list = [];
            list.Add(publication);
        }
        return publication;
    }

    /// <summary><paramref name="use"/> of the value published under <paramref name="key"/> (under the lock), or null when none is.</summary>
    public TResult? Use<TResult>(TKey key, Func<TValue, TResult> use) where TResult : class
    {
        lock (_gate)
            return _published.TryGetValue(key, out var list) && list.Count > 0 ? use(list[0].Value) : null;
    }

    private sealed class Publication(Publications<TKey, TValue> owner, TKey key, TValue value, Action<TValue>? withdrawn) : IDisposable
    {
        private bool _withdrawn;

        public TValue Value { get; } = value;

        public void Dispose()
        {
            lock (owner._gate)
            {
                if (_withdrawn) return;
                _withdrawn = true;
                if (owner._published.TryGetValue(key, out var list) && list.Remove(this) && list.Count == 0) owner._published.Remove(key);
                withdrawn?.Invoke(Value);
            }
        }
    }
}
