using System.Security.Cryptography;
using AdapterServe.Modeling.Llama;
using Microsoft.Extensions.Logging;
using Prometheus;
using static TorchSharp.torch;

namespace AdapterServe.Engine;

/// <summary>
/// Containment of a failing forward step: retry once, then split the batch until the sequences that make it throw are
/// found; those fail (with an error id that is also in the log line), the rest go on as if nothing had happened.
/// </summary>
/// <remarks>
/// Why a failed attempt leaves nothing behind: <see cref="Forward"/> only reads the sequences and writes keys/values at
/// the positions it feeds (<c>Computed .. Computed + count − 1</c> of each sequence's own slot), from the same tokens each
/// time; every later attempt or step writes those rows again before it reads them, and no sequence reads another's slot.
/// Tokens, <c>Computed</c>, the sampler's generator, prompt logprobs and events change only in <see cref="Commit"/>,
/// which runs once per sequence and only on the output of an attempt that succeeded.
/// </remarks>
public sealed partial class GenerationEngine
{
    private static Counter.Child StepsRetriedOk => EngineMetrics.StepsRetriedOk;
    private static Counter.Child StepsIsolated => EngineMetrics.StepsIsolated;
    private static Counter.Child StepsFailed => EngineMetrics.StepsFailed;

    /// <summary>One sequence's share of a step: the tokens it feeds at its past length.</summary>
    private readonly record struct PlannedStep(Sequence Sequence, SequenceStep Step);

    /// <summary>
    /// What a forward pass hands to <see cref="Commit"/>: the packed layout, the logits <c>[rows, vocab]</c> (float32; on
    /// the host when a sequence samples from them), logprobs (host) when asked for, and each row's greedy token
    /// (argmax, taken on the device) when a sequence decodes greedily.
    /// </summary>
    private sealed record StepOutput(ForwardBatch Batch, Tensor Logits, Tensor? Logprobs, long[]? Greedy);

    /// <summary>Runs and commits <paramref name="step"/>, containing a forward pass that throws.</summary>
    private void RunContained(List<PlannedStep> step)
    {
        if (TryForward(step, out var output, out var first))
        {
            Commit(step, output);
            return;
        }
        if (TryForward(step, out output, out _))
        {
            StepsRetriedOk.Inc();
            _logger.LogWarning(first, "Engine step of {Count} sequences failed once and succeeded when retried", step.Count);
            Commit(step, output);
            return;
        }
        var culprits = new List<(PlannedStep Part, Exception Error)>();
        if (step.Count == 1) culprits.Add((step[0], first!));
        else Bisect(step, culprits);
        if (culprits.Count > 0)
        {
            FailCulprits(step.Count, culprits);
            return;
        }
        StepsRetriedOk.Inc();      // every part ran when split: nothing to blame
        _logger.LogWarning(first, "Engine step of {Count} sequences failed twice and ran when split", step.Count);
    }

    /// <summary>
    /// <paramref name="part"/> failed as a whole: runs and commits each half that succeeds, splits each that fails, and
    /// collects the single sequences that fail alone twice.
    /// </summary>
    private void Bisect(List<PlannedStep> part, List<(PlannedStep Part, Exception Error)> culprits)
    {
        if (part.Count == 1)
        {
            // It failed alone once: one more try, like any failed step, before it is blamed.
            if (TryForward(part, out var output, out var error)) Commit(part, output);
            else culprits.Add((part[0], error!));
            return;
        }
        int half = part.Count / 2;
        foreach (var side in (List<PlannedStep>[])[part[..half], part[half..]])
        {
            if (TryForward(side, out var output, out _)) Commit(side, output);
            else Bisect(side, culprits);
        }
    }

    private bool TryForward(List<PlannedStep> part, out StepOutput output, out Exception? error)
    {
        try
        {
            output = Forward(part);
            error = null;
            return true;
        }
        catch (Exception e)
        {
            output = null!;
            error = e;
            return false;
        }
    }

    /// <summary>Ends the sequences that make the step throw, each with the same error id as the log line.</summary>
    private void FailCulprits(int stepCount, List<(PlannedStep Part, Exception Error)> culprits)
    {
        string errorId = NewErrorId();
        bool all = culprits.Count == stepCount;
        (all ? StepsFailed : StepsIsolated).Inc();
        var requestIds = culprits.Select(c => $"{c.Part.Sequence.Owner.Request.RequestId}#{c.Part.Sequence.Index}").ToList();
        _logger.LogError(culprits[0].Error,
            "Engine step failed ({ErrorId}): retried, then split; {Failed} of {Count} sequences fail alone and end with the error ({RequestIds}); {Outcome}",
            errorId, culprits.Count, stepCount, requestIds, all ? "nothing of the step could go on" : "the others go on");
        foreach (var (part, _) in culprits)
            Finish(part.Sequence, FinishReason.Error, StepFailedMessage(errorId), EngineErrorCodes.StepFailed);
    }

    /// <summary>A failure outside a forward pass: every running sequence ends with the error.</summary>
    private void FailAll(Exception e)
    {
        string errorId = NewErrorId();
        StepsFailed.Inc();
        _logger.LogError(e, "Engine step failed ({ErrorId}) outside the forward pass; failing the {Count} running sequences", errorId, _running.Count);
        foreach (var s in _running.ToList()) Finish(s, FinishReason.Error, StepFailedMessage(errorId), EngineErrorCodes.StepFailed);
    }

    private static string StepFailedMessage(string errorId) => $"the engine step failed (error id {errorId}; the server log has the details)";

    private static string NewErrorId() => "step-" + RandomNumberGenerator.GetHexString(12, lowercase: true);
}
