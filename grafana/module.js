/*
 * Gauss datasource frontend, hand-written AMD (Grafana loads plugin modules as
 * AMD; no build step). Queries run in the Go-less Python backend
 * (gpx_gauss_*): this file only provides the query and config editors.
 *
 * Query model: {kind: "candles"|"quotes", timeframe: "auto"|"1s".."1d",
 *               topic: "quotes.raw" (quotes only), symbols: "EURUSD,GBPUSD"}
 */
define(['@grafana/data', '@grafana/runtime', 'react'], function (data, runtime, React) {
  'use strict';
  var h = React.createElement;
  var TIMEFRAMES = ['auto', '1s', '5s', '1m', '5m', '15m', '1h', '4h', '1d'];

  // DataSourceWithBackend is an ES class: extend it with class syntax (a constructor
  // function calling it without `new` would throw).
  class GaussDataSource extends runtime.DataSourceWithBackend {
    getDefaultQuery() {
      return { kind: 'candles', timeframe: 'auto', symbols: '' };
    }

    filterQuery(query) {
      return !!query.symbols && !query.hide;
    }

    // Dashboard variables may stand for symbols, topics and timeframes: $symbol, ${symbols:csv}.
    applyTemplateVariables(query, scopedVars) {
      var srv = runtime.getTemplateSrv();
      return Object.assign({}, query, {
        symbols: srv.replace(String(query.symbols || ''), scopedVars, 'csv'),
        topic: query.topic ? srv.replace(query.topic, scopedVars) : query.topic,
        timeframe: query.timeframe ? srv.replace(query.timeframe, scopedVars) : query.timeframe,
      });
    }
  }

  function useResource(datasource, path, params) {
    var state = React.useState([]);
    var key = path + JSON.stringify(params || {});
    React.useEffect(function () {
      var live = true;
      datasource.getResource(path, params).then(
        function (items) { if (live) { state[1](Array.isArray(items) ? items : []); } },
        function () { if (live) { state[1]([]); } }
      );
      return function () { live = false; };
    }, [key]);
    return state[0];
  }

  function row(label, control) {
    return h('div', { className: 'gf-form', style: { marginBottom: 4 } },
      h('label', { className: 'gf-form-label width-8' }, label), control);
  }

  function QueryEditor(props) {
    var query = Object.assign({ kind: 'candles', timeframe: 'auto', topic: 'quotes.raw', symbols: '' }, props.query);
    var topic = query.kind === 'candles' ? 'ohlc.1m' : query.topic;
    var symbols = useResource(props.datasource, 'symbols', { topic: topic });
    var topics = useResource(props.datasource, 'topics');
    function change(field) {
      return function (event) {
        var next = Object.assign({}, query);
        next[field] = event.target.value;
        props.onChange(next);
        if (field !== 'symbols') { props.onRunQuery(); }
      };
    }
    var kind = h('select', { className: 'gf-form-input width-10', value: query.kind, onChange: change('kind') },
      h('option', { value: 'candles' }, 'Candles'), h('option', { value: 'quotes' }, 'Quotes'));
    var second = query.kind === 'candles'
      ? row('Timeframe', h('select', { className: 'gf-form-input width-10', value: query.timeframe, onChange: change('timeframe') },
          TIMEFRAMES.map(function (tf) { return h('option', { key: tf, value: tf }, tf); })))
      : row('Topic', h('select', { className: 'gf-form-input width-16', value: query.topic, onChange: change('topic') },
          (topics.length ? topics : [{ name: query.topic }]).map(function (t) {
            return h('option', { key: t.name, value: t.name }, t.name);
          })));
    var listId = 'gauss-symbols-' + props.query.refId;
    var symbolInput = h('span', null,
      h('input', { className: 'gf-form-input width-24', list: listId, value: query.symbols,
        placeholder: 'EURUSD, GBPUSD', onChange: change('symbols'), onBlur: props.onRunQuery }),
      h('datalist', { id: listId }, symbols.map(function (s) { return h('option', { key: s, value: s }); })));
    return h('div', null, row('Kind', kind), second, row('Symbols', symbolInput));
  }

  function ConfigEditor(props) {
    var options = props.options;
    var secure = options.secureJsonFields || {};
    function setUrl(event) {
      props.onOptionsChange(Object.assign({}, options, { url: event.target.value }));
    }
    function setToken(event) {
      props.onOptionsChange(Object.assign({}, options, {
        secureJsonData: Object.assign({}, options.secureJsonData, { token: event.target.value }),
      }));
    }
    function resetToken() {
      props.onOptionsChange(Object.assign({}, options, {
        secureJsonFields: Object.assign({}, secure, { token: false }),
        secureJsonData: Object.assign({}, options.secureJsonData, { token: '' }),
      }));
    }
    var token = secure.token
      ? h('span', null, h('input', { className: 'gf-form-input width-16', disabled: true, value: 'configured' }),
          h('button', { className: 'btn btn-secondary', type: 'button', onClick: resetToken }, 'Reset'))
      : h('input', { className: 'gf-form-input width-24', type: 'password', placeholder: 'optional',
          value: (options.secureJsonData || {}).token || '', onChange: setToken });
    return h('div', { className: 'gf-form-group' },
      row('Gauss URL', h('input', { className: 'gf-form-input width-24', value: options.url || '',
        placeholder: 'http://127.0.0.1:9200', onChange: setUrl })),
      row('API token', token));
  }

  var plugin = new data.DataSourcePlugin(GaussDataSource)
    .setQueryEditor(QueryEditor)
    .setConfigEditor(ConfigEditor);
  return { plugin: plugin };
});
