// Shared by the benchmark programs: the JSON file of a run,
// {"card": ..., "date": <now, UTC>, <the program's own fields>, "rows": [<one object per row>]}.
#pragma once

#include <cstdarg>
#include <cstdio>
#include <ctime>
#include <string>
#include <vector>

namespace vmbench {

// printf-style formatting into a std::string (a row's JSON object, a header field).
inline std::string format(const char* fmt, ...) {
    va_list args;
    va_start(args, fmt);
    va_list again;
    va_copy(again, args);
    const int n = std::vsnprintf(nullptr, 0, fmt, args);
    va_end(args);
    std::string s(n > 0 ? std::size_t(n) : 0, '\0');
    if (n > 0) std::vsnprintf(s.data(), std::size_t(n) + 1, fmt, again);
    va_end(again);
    return s;
}

// Writes the run's JSON to path: fields are the program's own header lines (each "  \"name\": value,\n"),
// rows the objects of the rows. Returns 0, or 1 after saying on stderr that path cannot be written.
inline int write_rows_json(const std::string& path, const std::string& card, const std::string& fields,
                           const std::vector<std::string>& rows) {
    FILE* f = std::fopen(path.c_str(), "w");
    if (f == nullptr) {
        std::fprintf(stderr, "cannot write %s\n", path.c_str());
        return 1;
    }
    const std::time_t now = std::time(nullptr);
    char date[32];
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
    std::fprintf(f, "{\n  \"card\": \"%s\",\n  \"date\": \"%s\",\n%s  \"rows\": [\n", card.c_str(), date, fields.c_str());
    for (std::size_t i = 0; i < rows.size(); ++i)
        std::fprintf(f, "    %s%s\n", rows[i].c_str(), i + 1 < rows.size() ? "," : "");
    std::fprintf(f, "  ]\n}\n");
    std::fclose(f);
    std::printf("wrote %s\n", path.c_str());
    return 0;
}

} // namespace vmbench
