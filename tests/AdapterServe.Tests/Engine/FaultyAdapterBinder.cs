using AdapterServe.Engine;
using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Tests.Engine;

public enum Fault { None, Once, Twice, Always }

/// <summary>
/// An adapter port with one adapter, <see cref="Name"/>, that leaves every output as the base computes it, but makes the
/// forward pass throw (in the last layer's down projection, after every layer wrote its keys/values) in any step that
/// holds a sequence on it, once that adapter has decoded <c>cleanDecodeSteps</c> tokens: never, once, twice, or every time.
/// Runs on the engine thread, as the engine calls it.
/// </summary>
public sealed class FaultyAdapterBinder(Fault fault, int cleanDecodeSteps, int layers) : IAdapterBinder
{
    public const string Name = "faulty";

    private sealed class Binding : AdapterBinding
    {
        public override string GroupKey => Name;
    }

    private int _decodeHooks;
    private int _throws;
    private int _largestFailingBatch;

    /// <summary>Forward passes made to throw.</summary>
    public int Throws => Volatile.Read(ref _throws);
    /// <summary>Most sequences in a step made to throw (above 1: the fault hit a mixed batch).</summary>
    public int LargestFailingBatch => Volatile.Read(ref _largestFailingBatch);

    public AdapterBinding Bind(IReadOnlyList<AdapterRef> adapters) =>
        adapters.FirstOrDefault(a => a.Name != Name) is { } unknown ? throw new AdapterNotFoundException(unknown.Name) : new Binding();

    public void ModelReady(IBaseWeights baseWeights) { }
    public bool IsReady(AdapterBinding binding) => true;
    public void Release(AdapterBinding binding) { }

    public IAdapterStepHook? BuildHook(IReadOnlyList<StepSegment> segments)
    {
        var faulty = segments.Where(s => s.Binding is Binding).ToList();
        if (faulty.Count == 0) return null;
        bool decode = faulty.All(s => s.TokenCount == 1);
        bool armed = decode && ++_decodeHooks > cleanDecodeSteps;
        bool throws = fault switch
        {
            Fault.Always => armed,
            Fault.Once => armed && _throws == 0,
            Fault.Twice => armed && _throws < 2,
            _ => false,
        };
        if (throws)
        {
            Interlocked.Increment(ref _throws);
            Volatile.Write(ref _largestFailingBatch, Math.Max(_largestFailingBatch, segments.Count));
        }
        return new Hook(throws, layers - 1);
    }

    private sealed class Hook(bool throws, int lastLayer) : IAdapterStepHook
    {
        public void Complete() { }
        public void Abandon() { }

        public Tensor Apply(int layer, Projection projection, Tensor x, Tensor baseOutput, Tensor baseWeight) =>
            throws && layer == lastLayer && projection == Projection.Down
                ? throw new InvalidOperationException("injected fault in the forward pass")
                : baseOutput;
    }
}
