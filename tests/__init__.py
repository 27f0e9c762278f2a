# A key that must never show up in any output: tests grep their captures for it.
API_KEY = "sk-test-NEVER-PRINT-ME-4242"
