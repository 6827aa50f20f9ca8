using System.Runtime.CompilerServices;
using System.Threading.Channels;
using AdapterServe.Engine;
using AdapterServe.Server.Hosting;
using AdapterServe.Server.OpenAI;

namespace AdapterServe.Server.Generation;

/// <summary>
/// The engine requests of one HTTP request (one per prompt) with their event streams merged. Cancelling the HTTP
/// request (client gone) cancels them; disposing before they finished (an error while answering) cancels them too.
/// When the shutdown drain times out (<c>drainExpired</c>), the events end with a 503 <c>server_shutting_down</c> error
/// after those already received, and the engine requests are cancelled.
/// </summary>
internal sealed class GenerationRun : IAsyncDisposable
{
    private readonly GenerationPlan _plan;
    private readonly CancellationTokenSource _cancel;
    private readonly Channel<(int Prompt, GenerationEvent Event)> _events =
        Channel.CreateUnbounded<(int, GenerationEvent)>(new UnboundedChannelOptions { SingleReader = true });
    private bool _completed;
    private CancellationTokenRegistration _drainExpired;

    private GenerationRun(GenerationPlan plan, CancellationToken requestAborted)
    {
        _plan = plan;
        _cancel = CancellationTokenSource.CreateLinkedTokenSource(requestAborted);
    }

    /// <summary>Submits every prompt; engine refusals (queue full, unknown adapter, …) become OpenAI errors.</summary>
    public static GenerationRun Start(IGenerationEngine engine, GenerationPlan plan, string requestId, CancellationToken requestAborted, CancellationToken drainExpired = default)
    {
        var run = new GenerationRun(plan, requestAborted);
        var readers = new List<ChannelReader<GenerationEvent>>(plan.Prompts.Count);
        try
        {
            for (int p = 0; p < plan.Prompts.Count; p++)
            {
                readers.Add(engine.Submit(new GenerationRequest
                {
                    RequestId = plan.Prompts.Count == 1 ? requestId : $"{requestId}-{p}",
                    PromptTokens = plan.Prompts[p].TokenIds,
                    Sampling = plan.Sampling,
                    Adapters = plan.Adapters,
                    N = plan.N,
                    PromptLogprobs = plan.PromptLogprobs,
                }, run._cancel.Token));
            }
        }
        catch (Exception e)
        {
            run._cancel.Cancel();     // prompts already admitted stop at the next step
            run._cancel.Dispose();
            throw Translate(e, plan);
        }
        run._openReaders = readers.Count;
        for (int p = 0; p < readers.Count; p++) run.Forward(p, readers[p]);
        run._drainExpired = drainExpired.Register(run.CutOff);
        return run;
    }

    /// <summary>The shutdown drain timed out: end the events with the error (they are read up to it), then stop the engine requests.</summary>
    private void CutOff()
    {
        _events.Writer.TryComplete(ApiException.ShuttingDown("The server is shutting down and its drain timeout passed before this generation finished; retry it."));
        _cancel.Cancel();
    }

    private int _openReaders;

    private void Forward(int prompt, ChannelReader<GenerationEvent> reader)
    {
        _ = Task.Run(async () =>
        {
            try
            {
                await foreach (var e in reader.ReadAllAsync(_cancel.Token))
                    _events.Writer.TryWrite((prompt, e));   // unbounded: never refuses while open
                if (Interlocked.Decrement(ref _openReaders) == 0) _events.Writer.TryComplete();
            }
            catch (Exception e)
            {
                _events.Writer.TryComplete(e);
            }
        });
    }

    /// <summary>Waits for the first event without consuming it, so that refusals arriving through the stream still become HTTP errors before a streamed response starts.</summary>
    public async Task WaitForFirstEventAsync(CancellationToken cancellationToken)
    {
        try { await _events.Reader.WaitToReadAsync(cancellationToken); }
        catch (Exception e) when (e is not OperationCanceledException) { throw Translate(e, _plan); }
    }

    /// <summary>The events of all prompts as they arrive, tagged with the prompt index.</summary>
    public async IAsyncEnumerable<(int Prompt, GenerationEvent Event)> ReadAllAsync([EnumeratorCancellation] CancellationToken cancellationToken)
    {
        while (true)
        {
            bool more;
            try { more = await _events.Reader.WaitToReadAsync(cancellationToken); }
            catch (Exception e) when (e is not OperationCanceledException) { throw Translate(e, _plan); }
            if (!more) break;
            while (_events.Reader.TryRead(out var item)) yield return item;
        }
        _completed = true;
    }

    /// <summary>Engine refusals as OpenAI errors naming this request's fields; anything else unchanged (the error middleware logs it as a 500).</summary>
    private static Exception Translate(Exception e, GenerationPlan plan) => ApiErrors.Known(e, plan) ?? e;

    public ValueTask DisposeAsync()
    {
        _drainExpired.Dispose();     // waits for a running CutOff, so it never meets a disposed source
        if (!_completed) _cancel.Cancel();
        _cancel.Dispose();
        return ValueTask.CompletedTask;
    }
}
