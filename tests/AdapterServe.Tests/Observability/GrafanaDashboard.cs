using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace AdapterServe.Tests.Observability;

/// <summary>
/// The provisioned Grafana dashboard (<c>deploy/grafana/dashboards/adapterserve.json</c>, copied next to the tests) read
/// as Grafana reads it: panels (rows included, nested or not) with their PromQL targets, and the template variables.
/// </summary>
public sealed partial class GrafanaDashboard
{
    public sealed record Target(string Panel, string RefId, string Expression, bool Instant);

    /// <summary>A query variable: <c>label_values(Selector, Label)</c>.</summary>
    public sealed record Variable(string Name, string Selector, string Label, string? AllValue);

    public static string Folder => Path.Combine(AppContext.BaseDirectory, "Observability", "grafana");

    public required JsonObject Json { get; init; }
    public required IReadOnlyList<JsonObject> Panels { get; init; }
    public required IReadOnlyList<Target> Targets { get; init; }
    public required IReadOnlyList<Variable> Variables { get; init; }

    public static GrafanaDashboard Load()
    {
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(Folder, "adapterserve.json")))!.AsObject();
        var panels = new List<JsonObject>();
        void Walk(JsonArray? list)
        {
            foreach (var p in list ?? [])
            {
                panels.Add(p!.AsObject());
                Walk(p["panels"] as JsonArray);
            }
        }
        Walk(json["panels"] as JsonArray);
        var targets = panels
            .SelectMany(p => (p["targets"] as JsonArray ?? []).Select(t => new Target(
                (string)p["title"]!, (string)t!["refId"]!, (string)t["expr"]!, (bool?)t["instant"] == true && (bool?)t["range"] != true)))
            .ToList();
        var variables = (json["templating"]?["list"] as JsonArray ?? [])
            .Select(v =>
            {
                // Grafana keeps a variable's query as a string (the classic form) or as an object with a "query" string.
                string query = v!["query"] is JsonObject editor ? (string)editor["query"]! : (string)v["query"]!;
                var m = LabelValues().Match(query);
                if (!m.Success) throw new InvalidDataException($"variable {(string?)v["name"]}: '{query}' is not label_values(selector, label)");
                return new Variable((string)v["name"]!, m.Groups["selector"].Value.Trim(), m.Groups["label"].Value.Trim(), (string?)v["allValue"]);
            })
            .ToList();
        return new GrafanaDashboard { Json = json, Panels = panels, Targets = targets, Variables = variables };
    }

    /// <summary>
    /// Replaces Grafana's variables (<c>$name</c> and <c>${name}</c>) with <paramref name="values"/>; fails on any
    /// variable left over (Prometheus would reject the <c>$</c> anyway, with a less helpful message).
    /// </summary>
    public static string Substitute(string expression, IReadOnlyDictionary<string, string> values)
    {
        string result = Variable_().Replace(expression, m =>
        {
            string name = m.Groups["braced"].Success ? m.Groups["braced"].Value : m.Groups["bare"].Value;
            return values.TryGetValue(name, out var value) ? value : throw new InvalidDataException($"'{expression}' uses ${name}, which the test does not set");
        });
        return result;
    }

    /// <summary>Metric names an expression reads (<c>adapterserve_*</c> and the vLLM-named <c>vllm:*</c>), histogram suffixes removed.</summary>
    public static IEnumerable<string> MetricNames(string expression) =>
        MetricName().Matches(expression).Select(m => m.Value).Select(n =>
            n.EndsWith("_bucket", StringComparison.Ordinal) ? n[..^7] :
            n.EndsWith("_count", StringComparison.Ordinal) ? n[..^6] :
            n.EndsWith("_sum", StringComparison.Ordinal) ? n[..^4] : n).Distinct();

    [GeneratedRegex(@"^\s*label_values\((?<selector>.+),\s*(?<label>[a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$")]
    private static partial Regex LabelValues();

    [GeneratedRegex(@"\$\{(?<braced>[a-zA-Z_][a-zA-Z0-9_]*)\}|\$(?<bare>[a-zA-Z_][a-zA-Z0-9_]*)")]
    private static partial Regex Variable_();

    [GeneratedRegex(@"\b(adapterserve_[a-z0-9_]+|vllm:[a-z0-9_]+)")]
    private static partial Regex MetricName();
}
