{
 "key": "0551c8948f5b38e6",
 "signature": "5bt0lm8CqnU3wXJDJG4TNeaVhakFaSjF6GphVNT1JVqI1gVnOeLQHvWYqvgr4O5wNzuhsUn9XvHI/tHpld4zCA=="
}
