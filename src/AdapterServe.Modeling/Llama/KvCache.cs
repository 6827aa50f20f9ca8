using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Modeling.Llama;

/// <summary>
/// Keys and values of every running sequence, one fixed slot of <see cref="SlotLength"/> positions per sequence.
/// Each layer holds one flat buffer <c>[slots · slotLength, kvHeads, headDim]</c>: row <c>slot · slotLength + position</c>.
/// Allocated once on the engine thread (outside any dispose scope) and disposed with the engine.
/// </summary>
public sealed class KvCache : IDisposable
{
    private readonly Tensor[] _keys;
    private readonly Tensor[] _values;
    private readonly Stack<int> _free;

    public KvCache(ModelConfig config, int slots, int slotLength, ScalarType dtype, Device device)
    {
        Slots = slots;
        SlotLength = slotLength;
        _keys = new Tensor[config.NumHiddenLayers];
        _values = new Tensor[config.NumHiddenLayers];
        for (int l = 0; l < config.NumHiddenLayers; l++)
        {
            _keys[l] = zeros([(long)slots * slotLength, config.NumKeyValueHeads, config.HeadDim], dtype, device);
            _values[l] = zeros([(long)slots * slotLength, config.NumKeyValueHeads, config.HeadDim], dtype, device);
        }
        _free = new Stack<int>(Enumerable.Range(0, slots).Reverse());
        Bytes = 2L * config.NumHiddenLayers * slots * slotLength * config.NumKeyValueHeads * config.HeadDim * _keys[0].ElementSize;
    }

    public int Slots { get; }
    public int SlotLength { get; }
    public long Bytes { get; }
    public int FreeSlots => _free.Count;

    public bool TryAllocate(out int slot) => _free.TryPop(out slot);

    public void Release(int slot)
    {
        if (slot < 0 || slot >= Slots || _free.Contains(slot)) throw new InvalidOperationException($"KV slot {slot} is not allocated");
        _free.Push(slot);
    }

    internal Tensor Keys(int layer) => _keys[layer];
    internal Tensor Values(int layer) => _values[layer];

    public void Dispose()
    {
        foreach (var t in _keys) t.Dispose();
        foreach (var t in _values) t.Dispose();
    }
}
