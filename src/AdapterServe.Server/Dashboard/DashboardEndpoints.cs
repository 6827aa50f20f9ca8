using System.Reflection;

namespace AdapterServe.Server.Dashboard;

/// <summary>
/// <c>/dashboard</c>: a self-contained page (HTML, CSS, plain JavaScript embedded in this assembly: no CDN, no build
/// step) that shows serving health and per-token expert routing, refreshed live from <c>/metrics</c>. Open like
/// <c>/metrics</c>, which it reads.
/// </summary>
public static class DashboardEndpoints
{
    private static readonly IReadOnlyDictionary<string, (string ContentType, byte[] Bytes)> Files = new Dictionary<string, (string, byte[])>
    {
        ["dashboard.html"] = ("text/html; charset=utf-8", Read("dashboard.html")),
        ["dashboard.css"] = ("text/css; charset=utf-8", Read("dashboard.css")),
        ["dashboard.js"] = ("text/javascript; charset=utf-8", Read("dashboard.js")),
    };

    public static WebApplication MapDashboard(this WebApplication app)
    {
        var group = app.MapGroup("/dashboard").WithTags("Operations").ExcludeFromDescription();
        group.MapGet("", () => File("dashboard.html"));
        group.MapGet("/{file}", (string file) => Files.ContainsKey(file) ? File(file) : Results.NotFound());
        return app;
    }

    private static IResult File(string name) => Results.Bytes(Files[name].Bytes, Files[name].ContentType);

    private static byte[] Read(string name)
    {
        using var stream = Assembly.GetExecutingAssembly().GetManifestResourceStream($"AdapterServe.Server.Dashboard.{name}")
            ?? throw new InvalidOperationException($"the dashboard file {name} is not embedded in the server assembly");
        using var copy = new MemoryStream();
        stream.CopyTo(copy);
        return copy.ToArray();
    }
}
