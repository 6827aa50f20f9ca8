using System.Diagnostics;
using System.Threading.Channels;

namespace AdapterServe.Engine;

/// <summary>A submitted request as the engine thread tracks it: its choices, its output channel, its cancellation.</summary>
internal sealed class RequestState(GenerationRequest request, string modelLabel)
{
    public GenerationRequest Request { get; } = request;
    public string ModelLabel { get; } = modelLabel;
    public Channel<GenerationEvent> Output { get; } = Channel.CreateUnbounded<GenerationEvent>(new UnboundedChannelOptions { SingleWriter = true, SingleReader = true });
    public long ArrivalTimestamp { get; } = Stopwatch.GetTimestamp();
    public volatile bool Cancelled;
    public int OpenChoices;
    public CancellationTokenRegistration Registration;
    /// <summary>The request's adapters as the Adapters room bound them (leases), released when the last choice ends.</summary>
    public AdapterBinding? AdapterState;

    public void Emit(GenerationEvent e) => Output.Writer.TryWrite(e);
}

internal enum SequenceStatus { Waiting, Prefilling, Decoding, Finished }

/// <summary>One choice of a request: its tokens, KV slot, sampler and output text.</summary>
internal sealed class Sequence(RequestState owner, int index, Sampler sampler, OutputText text)
{
    public RequestState Owner { get; } = owner;
    public int Index { get; } = index;
    public Sampler Sampler { get; } = sampler;
    public OutputText Text { get; } = text;
    public List<int> Tokens { get; } = [.. owner.Request.PromptTokens];
    public int PromptLength { get; } = owner.Request.PromptTokens.Count;
    public SequenceStatus Status { get; set; } = SequenceStatus.Waiting;
    public int Slot { get; set; } = -1;
    /// <summary>Tokens whose keys/values are in the cache.</summary>
    public int Computed { get; set; }
    public int Generated => Tokens.Count - PromptLength;
    public long LastTokenTimestamp { get; set; }
    public List<TokenLogprob?>? PromptLogprobs { get; set; }
}
