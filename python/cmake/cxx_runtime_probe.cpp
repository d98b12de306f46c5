// A tiny module that uses the C++ runtime the way the extension does (formatted output of integers: the
// first thing that breaks when a module carries its own static libstdc++). cxx_runtime.cmake links it
// with the chosen compiler and flags and reads which C++ runtime it NEEDs.
#include <sstream>
#include <string>

extern "C" int vmonarch_cxx_runtime_probe(long value) {
    std::ostringstream os;
    os << "probe " << value;
    return static_cast<int>(os.str().size());
}
