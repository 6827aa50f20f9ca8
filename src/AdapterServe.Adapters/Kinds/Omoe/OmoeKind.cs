using System.Text.Json.Nodes;
using AdapterServe.Adapters.Experts;
using AdapterServe.Adapters.Kinds.Mixtures;
using AdapterServe.Adapters.Kinds.Omoe;
using AdapterServe.Adapters.Store;
using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Adapters
{
    public readonly partial record struct AdapterKind
    {
        public static readonly AdapterKind Omoe = new("omoe");
    }
}

namespace AdapterServe.Adapters.Kinds.Omoe
{
    /// <summary>A validated OMoE adapter. Plain data: no tensors.</summary>
    public sealed record OmoeDescription(OmoeLayout Layout) : AdapterDescription(AdapterKind.Omoe, Layout.WeightBytes)
    {
        public override IAdapterKindHandler Handler => OmoeKind.Instance;
        public override int MaxRank => Layout.Config.R;
        public override IReadOnlyList<string> TargetModules => Layout.Modules.Select(m => m.Projection.ShortName()).Distinct().ToList();
        public override IReadOnlyList<AdapterModuleSummary> ModuleSummaries =>
            Layout.Modules.Select(m => new AdapterModuleSummary(m.Layer, m.Projection, Layout.Config.R, new Dictionary<string, object>
            {
                ["experts"] = Layout.Config.NumExperts,
                ["top_k"] = Layout.Config.TopK ?? Layout.Config.NumExperts,
                ["scaling"] = Layout.Config.Scaling,
                ["rescale"] = Layout.Config.RescaleNorm ? "norm" : "none",
            })).ToList();
        public override IReadOnlyList<string> Experts => ExpertSite.Indexed(Layout.Config.NumExperts);
        public override int? TopK => Layout.Config.TopK ?? Layout.Config.NumExperts;
    }

    /// <summary>peft_type OMOE (methods.md §4.2): per-token Gram–Schmidt over n LoRA experts, in the PEFT two-file layout.</summary>
    public sealed class OmoeKind : IAdapterKindHandler
    {
        public static OmoeKind Instance { get; } = new();

        private OmoeKind() { }

        public IReadOnlyList<string> PeftTypes { get; } = [OmoeConfig.PeftType];

        public AdapterFiles Files => AdapterFiles.Peft;

        public AdapterDescription Describe(string directory, JsonObject config, ModelConfig baseModel, AdapterValidationOptions options) =>
            new OmoeDescription(OmoeValidator.Validate(directory, OmoeConfig.Parse(MixtureConfigFields.From(config, OmoeConfig.FileName)), baseModel, options));

        public IAdapterModules Load(AdapterRecord record, IBaseWeights baseWeights, Device device, ScalarType dtype)
        {
            var description = record.Description as OmoeDescription
                ?? throw new ArgumentException($"adapter '{record.Name}' is a '{record.Description.Kind}' adapter, not an OMoE one", nameof(record));
            return new OmoeModules(OmoeWeights.Load(record.Directory, description.Layout, record.Name, device, dtype));
        }

        public IAdapterStepExecutor CreateStepExecutor(IReadOnlyList<AdapterTokenGroup> groups) =>
            new OmoeStepExecutor(groups, ExpertUsage.Shared.JoinStep());
    }

    /// <summary>The loaded tensors of one OMoE adapter version.</summary>
    public sealed class OmoeModules(OmoeWeights weights) : IAdapterModules
    {
        public OmoeWeights Weights { get; } = weights;
        public long Bytes => Weights.Bytes;
        public bool Targets(int layer, Projection projection) => Weights.Module(layer, projection) is not null;
        public IAdapterModules To(Device device) => new OmoeModules(Weights.To(device));
        public void Dispose() => Weights.Dispose();
    }

    /// <summary>
    /// OMoE's share of one step. Two paths, chosen per group when the step is built: several short groups of slotted
    /// adapters of one signature go through <see cref="OmoeSlotStep"/> (one fixed sequence of calls per projection for
    /// all of them); the others (a single OMoE group, prefills, adapters without a slot, a lone signature) each run the
    /// fixed sequence of <see cref="OmoeModule.Delta"/> (whatever n, top_k or the routing). Selections are recorded on
    /// the device either way, the rows added in place.
    /// </summary>
    internal sealed class OmoeStepExecutor(IReadOnlyList<AdapterTokenGroup> groups, ExpertStepTally tally)
        : MixtureStepExecutor<OmoeWeights>(groups, tally, m => (m as OmoeModules)?.Weights, "an OMoE one", OmoeSlotStep.TryBuild)
    {
        protected override void ApplyGroup(AdapterTokenGroup g, OmoeWeights weights, int layer, Projection projection, Tensor x, Tensor y)
        {
            if (weights.Module(layer, projection) is not var (module, site)) return;
            AdapterTokenGroup.EnsureFits(g.Adapter, layer, projection, module.OutFeatures, module.InFeatures, x, y);
            var delta = module.Delta(g.Rows(x), out var selected);                 // [n_g, d_out]
            if (selected is null) Tally.RecordAll(site, g.Count);
            else Tally.RecordTopK(site, selected);
            g.AddScaledRows(y, delta);
        }

        /// <summary>The siblings the adapter adapts side by side (<see cref="OmoeSiblings"/>), in one sequence of calls.</summary>
        protected override void ApplyGroupSiblings(AdapterTokenGroup g, OmoeWeights weights, int layer, IReadOnlyList<Projection> projections, Tensor x, IReadOnlyList<Tensor> ys)
        {
            if (weights.Siblings(layer, projections) is not { } siblings)
            {
                base.ApplyGroupSiblings(g, weights, layer, projections, x, ys);
                return;
            }
            var outputs = SiblingModules.Outputs(g.Adapter, layer, siblings.Projections, j => (siblings.Modules[j].Module.OutFeatures, siblings.Modules[j].Module.InFeatures),
                projections, x, ys);
            var (deltas, selected) = siblings.Deltas(g.Rows(x));                    // per sibling [n_g, d_out_j], [n_g, K]?
            for (int j = 0; j < outputs.Length; j++)
            {
                var site = siblings.Modules[j].Site;
                if (selected[j] is { } ids) Tally.RecordTopK(site, ids);
                else Tally.RecordAll(site, g.Count);
                g.AddScaledRows(outputs[j], deltas[j]);
            }
        }
    }
}
