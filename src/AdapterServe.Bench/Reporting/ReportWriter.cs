using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace AdapterServe.Bench.Reporting;

/// <summary>Renders a <see cref="BenchReport"/> as a human table or as JSON (snake_case field names).</summary>
public static class ReportWriter
{
    public static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    public static string ToJson(BenchReport report) => JsonSerializer.Serialize(report, Json);

    public static void WriteJson(BenchReport report, string path)
    {
        string full = Path.GetFullPath(path);
        if (Path.GetDirectoryName(full) is { Length: > 0 } dir) Directory.CreateDirectory(dir);
        File.WriteAllText(full, ToJson(report));
    }

    public static string ToTable(BenchReport report)
    {
        var c = CultureInfo.InvariantCulture;
        var m = report.Machine;
        var sb = new StringBuilder();
        sb.Append(c, $"AdapterServe bench · {report.Scenario}");
        if (report.Model is { } model)
            sb.Append(c, $" · model {model.Name} (hidden {model.HiddenSize}, {model.Layers} layers, {model.Heads}/{model.KeyValueHeads} heads, vocab {model.VocabSize}, {model.Parameters / 1e6:0.#}M parameters)");
        sb.AppendLine();
        sb.AppendLine(c, $"machine: {m.Cores} cores · {m.Cpu} · {m.Os} · {m.Runtime} · TorchSharp {m.TorchSharpVersion ?? "-"} · dtype {m.Dtype ?? "-"} · device {m.Device ?? "-"} · torch threads {(m.TorchThreads?.ToString(c) ?? "-")} · load average {m.LoadAverage ?? "-"}{string.Concat(m.Environment.Select(e => $" · {e.Key}={e.Value}"))}");
        sb.AppendLine();

        if (report.Figures.Count > 0)
        {
            int w = Math.Max(6, report.Figures.Max(f => f.Name.Length));
            sb.AppendLine(c, $"{"figure".PadRight(w)}  {"unit",-9} {"median",12}  {"target",-10} runs");
            foreach (var f in report.Figures)
                sb.AppendLine(c, $"{f.Name.PadRight(w)}  {f.Unit,-9} {Number(f.Median),12}  {Mark(f.Target, f.Met),-10} {string.Join(" ", f.Runs.Select(Number))}");
            sb.AppendLine();
        }
        if (report.Ratios.Count > 0)
        {
            int w = Math.Max(5, report.Ratios.Max(r => r.Name.Length));
            sb.AppendLine(c, $"{"ratio".PadRight(w)}  {"value",8}  target");
            foreach (var r in report.Ratios)
                sb.AppendLine(c, $"{r.Name.PadRight(w)}  {r.Value.ToString("0.000", c),8}  {Mark(r.Target, r.Met)}");
            sb.AppendLine();
        }
        if (report.Memory.Count > 0)
        {
            sb.AppendLine(c, $"{"memory",-12} {"at s",8} {"working set",14} {"private",14} {"managed",14} {"live tensors",13}");
            foreach (var s in report.Memory)
                sb.AppendLine(c, $"{s.Label,-12} {s.AtSeconds,8:0.0} {Mib(s.WorkingSetBytes),14} {Mib(s.PrivateBytes),14} {Mib(s.ManagedHeapBytes),14} {(s.TorchLiveTensors?.ToString(c) ?? "-"),13}");
            sb.AppendLine();
        }
        foreach (var note in report.Notes) sb.AppendLine(c, $"note: {note}");
        sb.AppendLine(c, $"total {report.TotalSeconds:0.0}s");
        return sb.ToString();
    }

    private static string Number(double v) => v switch
    {
        double.NaN => "NaN",
        >= 1000 or <= -1000 => v.ToString("0", CultureInfo.InvariantCulture),
        >= 10 or <= -10 => v.ToString("0.0", CultureInfo.InvariantCulture),
        _ => v.ToString("0.###", CultureInfo.InvariantCulture),
    };

    private static string Mib(long bytes) => (bytes / (1024.0 * 1024.0)).ToString("0.0", CultureInfo.InvariantCulture) + " MiB";

    private static string Mark(Target? target, bool? met) => target is null ? "" : $"{target} {(met == true ? "met" : "MISSED")}";
}
